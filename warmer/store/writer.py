"""The executor's ledger writes, committed in batches by one thread, off the event loop.

A database write may wait: SQLite lets one process write at a time and another one
holding its write lock makes ours wait (``busy_timeout``, 30 s); PostgreSQL may be far
away. The executor's event loop moves every byte of a run, so it never waits for the
database: it hands each write (a ``warmer.store.ledger`` op: item updates, holdings,
incidents) to a :class:`LedgerWriter` and goes on. The writer's thread commits what has
queued in one transaction (``Ledger.apply``), in the order it was submitted, at most
``interval`` (0.2 s) after the first op of a batch was submitted or as soon as ``batch``
ops have queued, whichever comes first; ``flush`` commits everything submitted so far now.

Durability: the ledger always holds a prefix of what was submitted (batches are atomic and
in order), so it never shows an item done without the holding recorded before it. A killed
process loses at most the blobs in flight plus the writes not yet committed: normally
the last batch (sub-second); while another process holds the database's write lock,
everything since it took it (up to ``busy_timeout``, after which the batch fails). What is
lost is redone by the next run: an item left 'running' or 'pending' is fetched again, a
cache hit at the mirror.

Errors: a batch that fails to commit stops the writer. Its error is raised (as
:class:`LedgerWriteError`) by every later ``submit``, ``flush`` and ``close``, so a run
whose bookkeeping cannot be written fails rather than moves bytes nobody records.

SQLite's in-memory database is not supported: each thread sees its own.
"""

from __future__ import annotations

import threading
import time

from warmer.store.ledger import Ledger, LedgerOp

INTERVAL = 0.2  # seconds a batch waits for more ops after its first one
BATCH = 500  # ops committed in one transaction at most


class LedgerWriteError(RuntimeError):
    """The writer could not commit a batch; ``__cause__`` is the database's error."""


class LedgerWriter:
    """Commits submitted ledger ops in order, in batches, on its own thread.

    ``submit`` never waits for the database (it only takes a lock that the thread holds
    for list operations, never across a commit), so it may be called on an event loop.
    ``flush`` and ``close`` wait, so call them in a thread from async code
    (``asyncio.to_thread``).
    """

    def __init__(self, ledger: Ledger, *, interval: float = INTERVAL, batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.ledger = ledger
        self.interval = interval
        self.batch = batch
        self._cond = threading.Condition()
        self._queue: list[LedgerOp] = []
        self._submitted = 0  # ops submitted so far; the queue holds the last of them
        self._committed = 0  # ops committed so far (a prefix of the submitted ones)
        self._flush_to = 0  # a flush waits for ops up to here: commit without waiting
        self._closing = False
        self._error: LedgerWriteError | None = None
        # A daemon: a process that exits without closing the writer is not held up by it
        # (what was queued is lost, as with a kill); the executor always closes it.
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    @property
    def committed(self) -> int:
        """How many of the submitted ops are committed."""
        with self._cond:
            return self._committed

    def submit(self, op: LedgerOp) -> None:
        """Queue ``op`` after every op submitted before it; raises the writer's error."""
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise RuntimeError("ledger writer is closed")
            self._queue.append(op)
            self._submitted += 1
            if len(self._queue) == 1 or len(self._queue) >= self.batch:
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every op submitted before this call is committed (blocking)."""
        with self._cond:
            target = self._submitted
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while self._committed < target and self._error is None:
                self._cond.wait()
            self._raise_if_failed()

    def close(self) -> None:
        """Commit what is queued, stop the thread (blocking); raises the writer's error.

        Idempotent: a second call waits for nothing and raises the same error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _take(self) -> list[LedgerOp] | None:
        """The next batch, once it is due; None when closed and drained."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            due = time.monotonic() + self.interval
            while (
                len(self._queue) < self.batch
                and not self._closing
                and self._flush_to <= self._committed
                and (left := due - time.monotonic()) > 0
            ):
                self._cond.wait(left)
            batch, self._queue = self._queue[: self.batch], self._queue[self.batch :]
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self.ledger.apply(batch)
            except BaseException as exc:  # raised to whoever submits, flushes or closes
                error = LedgerWriteError(f"could not write the ledger ({len(batch)} ops): {exc}")
                error.__cause__ = exc
                with self._cond:
                    self._error = error
                    self._queue.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._committed += len(batch)
                self._cond.notify_all()
