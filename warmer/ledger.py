"""The ledger: what each mirror holds, image resolutions, runs and run items (filled in by the warm engine)."""

from __future__ import annotations

from warmer import db

db.register("ledger", [])
