"""Real log lines quoted in public issues and documentation parse to the expected events.

``tests/data/corpus/<format>.yaml``: entries of ``source`` (the URL the lines were quoted
from), ``lines`` (verbatim), ``expected`` events (reference, digest, pulled) and ``format``
(the format detected from the lines, or given when ``force`` is set because a snippet this
short has none of its format's markers). Every event carries ``name:tag`` (or a reference
by digest alone) and the digest apart, in every format; no image-looking line of an entry
goes unused unless the entry says how many do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from analytics.events import Event
from analytics.ingest import Options, scan_file

CORPUS = Path(__file__).parent / "data" / "corpus"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _entries() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for i, entry in enumerate(yaml.safe_load(path.read_text())):
            out.append((f"{path.stem}-{i}", entry))
    return out


ENTRIES = _entries()


def test_corpus_size_and_sources() -> None:
    lines = sum(len(e["lines"]) for _, e in ENTRIES)
    assert lines >= 60
    assert all(e["source"].startswith("https://") for _, e in ENTRIES)
    formats = {e["format"] for _, e in ENTRIES}
    assert {"docker", "podman", "buildkit", "kaniko", "gitlab", "github", "kubelet"} <= formats


@pytest.mark.parametrize(("name", "entry"), ENTRIES, ids=[n for n, _ in ENTRIES])
def test_corpus_entry(name: str, entry: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / f"{name}.log"
    log.write_text("\n".join(entry["lines"]) + "\n", encoding="utf-8")
    events: list[Event] = []
    fmt = entry["format"] if entry.get("force") else None
    result = scan_file(log, Options(default_time=AT, format=fmt), events.append)
    assert result.format == entry["format"], entry["source"]
    got = sorted(((str(e.reference), e.digest, e.pulled) for e in events), key=str)
    want = sorted(((x["reference"], x["digest"], x["pulled"]) for x in entry["expected"]), key=str)
    assert got == want, entry["source"]
    for ev in events:  # reference and digest apart, whatever the format
        if ev.reference.tag is not None:
            assert ev.reference.digest is None and "@" not in str(ev.reference)
        if ev.digest is not None:
            assert ev.digest.startswith("sha256:") and len(ev.digest) == 71
    assert result.unused.count == entry.get("unused", 0), result.unused.samples
