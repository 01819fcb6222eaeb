"""Synthetic CI workload (placeholder docstring, rewritten below)."""
