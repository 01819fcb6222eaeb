"""Aggregated usage store (filled in by the analytics work)."""

from __future__ import annotations

from warmer import db

db.register("analytics", [])
