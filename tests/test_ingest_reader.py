"""Compressed files, garbage lines and directory walking: skipped and counted, never fatal."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from analytics.events import Event
from analytics.ingest import Options, ingest
from analytics.ingest.reader import BlockReader, ReadStats

LOGS = Path(__file__).parent / "data" / "logs"
AT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def run(paths: list[Path]) -> tuple[list[Event], object]:
    out: list[Event] = []
    report = ingest(paths, Options(default_time=AT), on_event=out.append)
    return out, report


def test_gzip_and_zstd_read_directly(tmp_path: Path) -> None:
    raw = (LOGS / "github-job.log").read_bytes()
    (tmp_path / "job.log.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "job.log.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    plain, _ = run([LOGS / "github-job.log"])
    gz, _ = run([tmp_path / "job.log.gz"])
    zst, _ = run([tmp_path / "job.log.zst"])
    assert len(plain) == 4
    assert [e.to_json() for e in gz] == [e.to_json() for e in plain]
    assert [e.to_json() for e in zst] == [e.to_json() for e in plain]


def test_garbage_binary_invalid_utf8_and_megabyte_lines_are_counted(tmp_path: Path) -> None:
    good = (LOGS / "docker-pull.log").read_bytes()
    lines = good.split(b"\n")
    bad = [
        *lines[:5],
        b"\x00\x01\x02binary\xff\xfe junk",
        b"caf\xe9 latin-1 not utf-8",
        b"x" * (2 << 20),
        *lines[5:],
    ]
    path = tmp_path / "messy.log"
    path.write_bytes(b"\n".join(bad))
    evs, report = run([path])
    assert [str(e.reference) for e in evs][:3] == [
        "docker.io/library/python:3.12",
        "ghcr.io/acme/tools/builder:2024.05",
        "docker.io/library/alpine:3.19",
    ]
    assert len(evs) == 5  # the same as the clean file
    stats = report.stats  # type: ignore[attr-defined]
    assert (stats.binary, stats.invalid_utf8, stats.too_long) == (1, 1, 1)


def test_overlong_line_is_dropped_without_holding_it(tmp_path: Path) -> None:
    # A 5 MiB line read in 64 KiB blocks with a 16 KiB cap: dropped, counted, next lines kept.
    data = b"Status: Image is up to date for a:1\n" + b"y" * (5 << 20) + b"\nnext line\n"
    stats = ReadStats()
    with open(tmp_path / "f", "wb") as f:
        f.write(data)
    with open(tmp_path / "f", "rb") as f:
        blocks = list(BlockReader(f, stats, block_size=65536, max_line=16384))
    assert b"".join(blocks) == b"Status: Image is up to date for a:1\nnext line\n"
    assert stats.too_long == 1
    assert max(len(b) for b in blocks) <= 65536 + 16384


def test_directory_walk_unknown_and_corrupt_files_warn_and_continue(tmp_path: Path) -> None:
    shutil.copy(LOGS / "jenkins-console.log", tmp_path / "a.log")
    (tmp_path / "sub").mkdir()
    shutil.copy(LOGS / "podman-pull.log", tmp_path / "sub" / "b.log")
    (tmp_path / "notes.txt").write_text("nothing about images here\n")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"Status: x\n" * 100)[:30])
    evs, report = run([tmp_path])
    assert len(evs) == 2 + 3
    warnings = report.warnings  # type: ignore[attr-defined]
    assert len(warnings) == 2
    assert any("notes.txt" in w and "no known log format" in w for w in warnings)
    assert any("broken.gz" in w and "damaged: truncated gzip" in w for w in warnings)
    assert [f.path for f in report.failed] == [str(tmp_path / "broken.gz")]  # type: ignore[attr-defined]


def test_truncated_file_keeps_its_lines_once_and_a_repaired_copy_continues(
    tmp_path: Path,
) -> None:
    # Store what a truncated .gz/.zst held before the cut; reading it again adds nothing;
    # the complete file later (same content, whole) adds exactly the rest: the offset stops
    # at the last complete line, not inside the half line that was dropped.
    from analytics import store

    rng = __import__("random").Random(3)  # noise: zstd must not fit it all in one block
    raw = b"".join(
        b"job %d %s\n" % (i, rng.randbytes(60).hex().encode())
        + (LOGS / "docker-pull.log").read_bytes()
        for i in range(400)
    )
    for name, blob in (
        ("a.log.gz", gzip.compress(raw)),
        ("a.log.zst", zstandard.ZstdCompressor().compress(raw)),
    ):
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        path = tmp_path / name
        path.write_bytes(blob[: len(blob) // 2])
        first = ingest([path], Options(default_time=AT), url=url)
        assert [f.problem for f in first.files] == ["damaged"]
        assert 0 < first.events < 2000
        kept = int(store.usage_frame(url)["pulls"].sum())
        assert kept == first.events
        again = ingest([path], Options(default_time=AT), url=url)
        assert again.events == 0 and len(again.failed) == 1
        path.write_bytes(blob)
        whole = ingest([path], Options(default_time=AT), url=url)
        # A pull whose lines straddle the cut is flushed at the cut (as for a growing plain
        # log) and seen again with its outcome: at most one event per cut counts twice.
        assert whole.failed == [] and whole.events - (2000 - kept) in (0, 1)
        assert int(store.usage_frame(url)["pulls"].sum()) in (2000, 2001)


def test_fifo_is_skipped_without_being_opened(tmp_path: Path) -> None:
    # Bounded: run in a subprocess with a timeout, so a regression fails instead of hanging.
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "pipe.log")
    shutil.copy(LOGS / "podman-pull.log", tmp_path / "b.log")
    code = (
        "import sys, json; from pathlib import Path; from analytics.ingest import Options, ingest;"
        "r = ingest([Path(sys.argv[1])], Options());"
        "print(json.dumps([r.events, [f.problem for f in r.files]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[3, [null, "not-regular"]]'
