"""The database: every table, its migrations, and the code that reads and writes them.

Public surface, by module:

- ``db``: ``engine_for``, ``migrate``, ``session``, ``DEFAULT_URL``: one engine per URL,
  migrated on first use (SQLite by default, PostgreSQL when replicas share it);
- ``schema``: every table and ``MIGRATIONS``: the ledger's, the analytics store's, the
  stored rankings' and the job leases';
- ``ledger``: ``Ledger`` and its rows (``Holding``, ``Run``, ``RunItem``, ``Resolution``,
  ``Incident``, ``Drift``): what each mirror holds, runs and their items;
- ``writer``, ``writes``: ``LedgerWriter`` and the write values it batches off the event loop;
- ``rankings``: ``save_ranking``, ``latest_ranking``: the rankings the planner reads.

Nothing here imports the layers above (``warmer.warm``, ``analytics``, ``jobs``).
"""

__all__ = ["db", "ledger", "rankings", "schema", "writer", "writes"]
