"""Kubernetes image events: kubelet journal lines, ``kubectl get events`` tables and JSON
(JSON lines, or a whole ``-o json`` document), container runtime logs (containerd, CRI-O).

``Pulling image "x"`` opens a pull; ``Successfully pulled image "x" in 3.2s`` closes it
(a real pull); ``Container image "x" already present on machine`` is a use without a
pull. A pull that never succeeded is emitted at the end with ``pulled`` unknown.
containerd's ``PullImage "x"`` opens a pull that ``Pulled image "x" with image id ...,
repo digest "name@sha256:..."`` (with the digest) or ``PullImage "x" returns image
reference`` closes; CRI-O's ``Pulling image: x`` / ``Pulled image: name@sha256:...`` too,
paired by the request's ``id=`` (the pulled line names no tag, and may name the image
qualified by the unqualified-search registry it resolved to), else by repository; a
``Pulled`` line cut short by ``journalctl`` (``...@sha256:6cca>``) keeps its pull, not the
broken digest.
Events of ``events.k8s.io/v1`` (``note``, ``regarding``) read like core ones.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from analytics.ingest.base import Emit, Hit, LineParser, parse_iso, repository
from analytics.ingest.reader import ReadStats

_IMAGE = r'image \\?"([^"\\]+)\\?"'
_PULLING = re.compile(r"[Pp]ulling " + _IMAGE)  # lower case before Kubernetes 1.2
_PULLED = re.compile(r"Successfully pulled " + _IMAGE)
_PRESENT = re.compile(r"[Cc]ontainer " + _IMAGE + r" already present on machine")
_CD_PULL = re.compile(r'PullImage \\?"([^"\\]+)\\?"( returns)?')
_CD_PULLED = re.compile(
    r'Pulled image \\?"([^"\\]+)\\?".*?repo digest \\?"[^"\\@]+@(sha256:[0-9a-f]{64})'
)
_CRIO = re.compile(r"(Pulling|Pulled) image: (\S+?)\"?(?:\s|$)")
_CRIO_ID = re.compile(r"\bid=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ISO_PREFIX = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s")
# containerd writes ``time="2024-05-01T10:00:00.1Z"``, CRI-O ``time="2024-05-01 10:00:00.1Z"``.
_LOGRUS_TIME = re.compile(
    r'\btime="?(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?'
)
_KLOG = re.compile(r"\b[IWE](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+)\s")
_OBJECT = re.compile(r'object="([^"]+)"|\bpod/(\S+)')
_JOURNAL_HOST = re.compile(r"^(?:\S+ \S+ \S+|\S+) (\S+) (?:kubelet|containerd|crio)\[\d+\]:")
# ReplicaSet and Job pod names end in generated suffixes; strip them to name the workload.
_POD_SUFFIX = re.compile(r"(?:-[0-9a-f]{6,10})?-[0-9a-z]{5}$")
# Lines about an image that are not a use of it (a failure, the runtime's bookkeeping).
_NOT_A_USE = (
    "Failed to pull image",
    "Back-off pulling image",
    "ImageCreate event",
    "ImageUpdate event",
    "ImageDelete event",
    "Error: ErrImagePull",
    "Error: ImagePullBackOff",
    # CRI-O's status checks: the kubelet asks before each container start and around each
    # pull, so counting them would count a pull twice; its own lines say which it was.
    "Checking image status: ",
    "Image status: &",
)


def workload(obj: str) -> str:
    return _POD_SUFFIX.sub("", obj)


def is_document(head: bytes) -> bool:
    """A pretty-printed JSON document (``kubectl get events -o json``), not JSON lines."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return False
    try:
        json.loads(text.split(b"\n", 1)[0])
    except ValueError:
        return True
    return False


class KubeletParser(LineParser):
    name = "kubelet"
    keywords = (
        b"Pulling image",
        b"Successfully pulled image",
        b"already present on machine",
        b"PullImage ",
        b"Pulled image",
        b"pull image",
        b"pulling image",
        b"Image",
    )

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        super().__init__(emit, stats, default_time)
        self.pending: dict[tuple[str | None, str], tuple[datetime | None, str | None]] = {}
        self.requests: dict[str, str] = {}  # CRI-O request id -> the image its pull names

    def _time(self, line: str) -> datetime | None:
        m = _ISO_PREFIX.match(line)
        if m:
            return parse_iso(m.group(1).replace(" ", "T"))
        k = _KLOG.search(line)
        if k:  # klog has no year: take it from the file's default time
            year = self.default_time.year
            return parse_iso(f"{year}-{k.group(1)}-{k.group(2)}T{k.group(3)}+00:00")
        t = _LOGRUS_TIME.search(line)
        if t:  # containerd / CRI-O: nanoseconds, cut to what datetime holds
            frac, zone = (t.group(3) or "")[:7], t.group(4) or "Z"
            return parse_iso(f"{t.group(1)}T{t.group(2)}{frac}{zone}")
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
        except (ValueError, RecursionError):
            self.stats.malformed += 1
            return
        if not self.event(ev):
            self.stats.malformed += 1

    def event(self, ev: Any) -> bool:
        """One Kubernetes Event object (core/v1 or events.k8s.io/v1); False if it is none."""
        try:
            message = ev.get("message") or ev.get("note")
            if not isinstance(message, str):
                return "reason" in ev or "involvedObject" in ev or "regarding" in ev
            inv = ev.get("involvedObject") or ev.get("regarding") or {}
            obj = f"{inv.get('namespace', '')}/{inv.get('name', '')}".strip("/") or None
            stamp = (
                ev.get("lastTimestamp")
                or ev.get("deprecatedLastTimestamp")
                or ev.get("eventTime")
                or ev.get("firstTimestamp")
            )
            ts = parse_iso(stamp.replace("Z", "+00:00")) if isinstance(stamp, str) else None
            source = ev.get("source") or ev.get("deprecatedSource") or {}
            host = source.get("host") or ev.get("reportingInstance")
        except (KeyError, TypeError, AttributeError):
            return False
        self._message(message, ts, obj, host if isinstance(host, str) else None)
        return True

    def document(self, text: str) -> None:
        """A whole JSON document: an event, a list of them (``items``), or several
        concatenated (``kubectl get events -w -o json``)."""
        decoder = json.JSONDecoder()
        pos, end = 0, len(text)
        while pos < end:
            while pos < end and text[pos].isspace():
                pos += 1
            if pos >= end:
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except (ValueError, RecursionError):
                self.stats.malformed += 1
                return
            items = obj.get("items") if isinstance(obj, dict) else None
            for ev in items if isinstance(items, list) else [obj]:
                if not (isinstance(ev, dict) and self.event(ev)):
                    self.stats.malformed += 1
                else:
                    self.known += 1

    def _message(self, text: str, ts: datetime | None, obj: str | None, host: str | None) -> None:
        pipeline = workload(obj) if obj else None
        if "Successfully pulled" in text:
            m = _PULLED.search(text)
            if m:
                self.known += 1
                start, _ = self.pending.pop((obj, m.group(1)), (ts, None))
                self.emit(Hit(m.group(1), start or ts, None, True, pipeline, runner=host))
            return
        if "already present" in text:
            m = _PRESENT.search(text)
            if m:
                self.known += 1
                self.emit(Hit(m.group(1), ts, None, False, pipeline, runner=host))
            return
        if any(marker in text for marker in _NOT_A_USE):
            self.known += 1
            return
        m = _PULLING.search(text) if "ulling image" in text else None
        if m:
            self.known += 1
            self.pending.setdefault((obj, m.group(1)), (ts, host))
            return
        if "PullImage " in text or "Pulled image" in text or "Pulling image: " in text:
            self._runtime(text, ts, pipeline, host)

    def _runtime(
        self, text: str, ts: datetime | None, pipeline: str | None, host: str | None
    ) -> None:
        """containerd and CRI-O pull lines (the image is the key: they name no pod)."""
        done = _CD_PULLED.search(text)
        if done:
            self.known += 1
            start, _ = self.pending.pop((None, done.group(1)), (ts, None))
            self.emit(Hit(done.group(1), start or ts, done.group(2), True, pipeline, runner=host))
            return
        p = _CD_PULL.search(text)
        if p:
            self.known += 1
            if not p.group(2):
                self.pending.setdefault((None, p.group(1)), (ts, host))
            elif (None, p.group(1)) in self.pending:  # no "Pulled image" line (older)
                start, _ = self.pending.pop((None, p.group(1)))
                self.emit(Hit(p.group(1), start or ts, None, True, pipeline, runner=host))
            return
        c = _CRIO.search(text)
        if c:
            self.known += 1
            self._crio(c.group(1) == "Pulling", c.group(2), text, ts, pipeline, host)

    def _crio(
        self,
        pulling: bool,
        image: str,
        text: str,
        ts: datetime | None,
        pipeline: str | None,
        host: str | None,
    ) -> None:
        """CRI-O: ``Pulling image: x`` opens a pull, ``Pulled image: name@sha256:...``
        closes the one of the same request id (or, the id cut off, of the same repository)."""
        rid = _CRIO_ID.search(text)
        if pulling:
            self.pending.setdefault((None, image), (ts, host))
            if rid:
                self.requests[rid.group(1)] = image
            return
        name, _, digest = image.partition("@")
        digest = digest if _DIGEST.fullmatch(digest) else ""
        opened = self.requests.pop(rid.group(1), None) if rid else None
        if opened is None:
            opened = next(
                (k[1] for k in self.pending if k[0] is None and repository(k[1]) == name), None
            )
        if opened is not None and (None, opened) in self.pending:
            start, _ = self.pending.pop((None, opened))
            self.emit(Hit(opened, start or ts, digest or None, True, pipeline, runner=host))
        elif digest:  # a pull by digest alone whose opening line is not in this file
            self.emit(Hit(f"{name}@{digest}", ts, digest, True, pipeline, runner=host))

    def finish(self) -> None:
        for (obj, image), (ts, host) in self.pending.items():
            self.emit(Hit(image, ts, None, None, workload(obj) if obj else None, runner=host))
        self.pending.clear()
        self.requests.clear()
