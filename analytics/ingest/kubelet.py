"""Kubernetes image events: kubelet journal lines, ``kubectl get events`` tables, JSON events.

``Pulling image "x"`` opens a pull; ``Successfully pulled image "x" in 3.2s`` closes it
(a real pull); ``Container image "x" already present on machine`` is a use without a
pull. A pull that never succeeded is emitted at the end with ``pulled`` unknown.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from analytics.ingest.base import Emit, Hit, LineParser, parse_iso
from analytics.ingest.reader import ReadStats

_IMAGE = r'image \\?"([^"\\]+)\\?"'
_PULLING = re.compile(r"Pulling " + _IMAGE)
_PULLED = re.compile(r"Successfully pulled " + _IMAGE)
_PRESENT = re.compile(r"Container " + _IMAGE + r" already present on machine")
_ISO_PREFIX = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s")
_KLOG = re.compile(r"\b[IWE](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+)\s")
_OBJECT = re.compile(r'object="([^"]+)"|\bpod/(\S+)')
_JOURNAL_HOST = re.compile(r"^(?:\S+ \S+ \S+|\S+) (\S+) kubelet\[\d+\]:")
# ReplicaSet and Job pod names end in generated suffixes; strip them to name the workload.
_POD_SUFFIX = re.compile(r"(?:-[0-9a-f]{6,10})?-[0-9a-z]{5}$")


def workload(obj: str) -> str:
    return _POD_SUFFIX.sub("", obj)


class KubeletParser(LineParser):
    name = "kubelet"
    keywords = (b"Pulling image", b"Successfully pulled image", b"already present on machine")

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        super().__init__(emit, stats, default_time)
        self.pending: dict[tuple[str | None, str], tuple[datetime | None, str | None]] = {}

    def _time(self, line: str) -> datetime | None:
        m = _ISO_PREFIX.match(line)
        if m:
            return parse_iso(m.group(1).replace(" ", "T"))
        k = _KLOG.search(line)
        if k:  # klog has no year: take it from the file's default time
            year = self.default_time.year
            return parse_iso(f"{year}-{k.group(1)}-{k.group(2)}T{k.group(3)}+00:00")
        return None

    def feed(self, line: str) -> None:
        if line.startswith("{"):
            self._json(line)
            return
        ts = self._time(line)
        o = _OBJECT.search(line)
        obj = (o.group(1) or o.group(2)) if o else None
        h = _JOURNAL_HOST.match(line)
        self._message(line, ts, obj, h.group(1) if h else None)

    def _json(self, line: str) -> None:
        try:
            ev = json.loads(line)
            message = ev["message"]
            inv = ev.get("involvedObject") or {}
            obj = f"{inv.get('namespace', '')}/{inv.get('name', '')}".strip("/") or None
            stamp = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp")
            ts = parse_iso(stamp.replace("Z", "+00:00")) if isinstance(stamp, str) else None
            host = (ev.get("source") or {}).get("host") or ev.get("reportingInstance")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            self.stats.malformed += 1
            return
        if isinstance(message, str):
            self._message(message, ts, obj, host if isinstance(host, str) else None)

    def _message(self, text: str, ts: datetime | None, obj: str | None, host: str | None) -> None:
        pipeline = workload(obj) if obj else None
        if "Successfully pulled" in text:
            m = _PULLED.search(text)
            if m:
                start, _ = self.pending.pop((obj, m.group(1)), (ts, None))
                self.emit(Hit(m.group(1), start or ts, None, True, pipeline, runner=host))
            return
        if "already present" in text:
            m = _PRESENT.search(text)
            if m:
                self.emit(Hit(m.group(1), ts, None, False, pipeline, runner=host))
            return
        m = _PULLING.search(text)
        if m:
            self.pending.setdefault((obj, m.group(1)), (ts, host))

    def finish(self) -> None:
        for (obj, image), (ts, host) in self.pending.items():
            self.emit(Hit(image, ts, None, None, workload(obj) if obj else None, runner=host))
        self.pending.clear()
