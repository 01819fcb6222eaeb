"""Streaming ingest of CI, kubelet and registry logs into usage events.

``scan_file`` reads one file (plain, .gz, .zst; format detected from its first lines) and
calls back per ``analytics.events.Event``; ``ingest`` walks paths and, unless it is a dry
run, stores the hourly aggregates with idempotent offset bookkeeping (``analytics.store``).
"""

from __future__ import annotations

from analytics.ingest.detect import FORMATS, detect
from analytics.ingest.reader import ReadStats
from analytics.ingest.run import FileResult, Options, Resume, scan_file, walk
from analytics.ingest.session import IngestReport, ingest

__all__ = [
    "FORMATS",
    "FileResult",
    "IngestReport",
    "Options",
    "ReadStats",
    "Resume",
    "detect",
    "ingest",
    "scan_file",
    "walk",
]
