"""What the CI log parsers share: the client output they wrap, hits held until the log
names its pipeline."""

from __future__ import annotations

from datetime import datetime

from analytics.ingest.base import Emit, Hit, LineParser
from analytics.ingest.clients import ClientOutput
from analytics.ingest.reader import ReadStats


class ClientLog(LineParser):
    """A CI log whose steps' docker/podman/BuildKit output ``self.client`` reads (its hits
    go to ``client_emit``, else to ``emit``); the subclass reads what the CI system adds."""

    RUNS = False  # read `docker run IMAGE` as a use (see ClientOutput.runs)

    def __init__(
        self, emit: Emit, stats: ReadStats, default_time: datetime, client_emit: Emit | None = None
    ) -> None:
        super().__init__(emit, stats, default_time)
        self.client = ClientOutput(client_emit or emit, source=self.name, runs=self.RUNS)

    def recognized(self) -> int:
        return self.known + self.client.recognized()

    def finish(self) -> None:
        self.client.finish()


class HeldLog(ClientLog):
    """A CI log that names its pipeline after its first pulls: hits are held (at most
    ``HOLD`` at a time) and given the pipeline when released (``_release`` in ``finish``)."""

    HOLD = 1000

    def __init__(
        self, emit: Emit, stats: ReadStats, default_time: datetime, client_emit: Emit | None = None
    ) -> None:
        super().__init__(emit, stats, default_time, client_emit=client_emit or self._hold)
        self.held: list[Hit] = []

    def _hold(self, hit: Hit) -> None:
        self.held.append(hit)
        if len(self.held) >= self.HOLD:
            self._release()

    def _release(self) -> None:
        for hit in self.held:
            hit.pipeline = hit.pipeline or self.client.pipeline
            self.emit(hit)
        self.held.clear()
