"""``warmer pins`` against real registries: a Dockerfile pinned to a digest its tag moved
away from (with when), an unpinned tag, a current pin, and a tag the upstream lacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_refresh import Chain, RegistryFactory, make_chain


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from make_chain(registry_factory, tmp_path)


def test_pins_report_moved_unpinned_current_and_unknown(chain: Chain, tmp_path: Path) -> None:
    old = chain.catalogue.tag("library/redis", "7.4").digest
    alpine = chain.catalogue.tag("library/alpine", "3.19").digest
    chain.warm("eu", "redis:7.4")
    t0 = datetime.now(UTC) - timedelta(days=3)
    chain.refresh(t0)  # the upstream seen at the old digest
    new = chain.move("library/redis", "7.4")
    t1 = t0 + timedelta(days=1)
    assert chain.refresh(t1).moved == 1  # ... and at the new one a day later

    src = tmp_path / "src"
    src.mkdir()
    (src / "Dockerfile").write_text(
        f"FROM redis:7.4@{old} AS db\nFROM alpine:3.20 AS base\nFROM alpine:3.19@{alpine}\n"
    )
    result = chain.warmer("pins", str(src), "--json")
    assert result.exit_code == 0, result.output + result.stderr
    refs = {r["line"]: r for r in json.loads(result.stdout)["references"]}
    moved = refs[1]
    assert moved["status"] == "moved" and moved["pinned"] == old
    assert moved["current"] == new.digest and moved["pin"] == f"redis:7.4@{new.digest}"
    assert moved["moved_at"] == t1.isoformat()
    assert 2 * 86400 - 600 < moved["ago_seconds"] < 2 * 86400 + 600
    fresh = chain.catalogue.tag("library/alpine", "3.20").digest
    assert refs[2]["status"] == "unpinned" and refs[2]["pin"] == f"alpine:3.20@{fresh}"
    assert refs[3]["status"] == "current" and refs[3]["pin"] == f"alpine:3.19@{alpine}"

    text = chain.warmer("pins", str(src / "Dockerfile"))
    assert text.exit_code == 0
    assert f"MOVED 48h00m ago; pin to redis:7.4@{new.digest}" in text.stdout

    (tmp_path / "other").mkdir()
    bad = tmp_path / "other" / "Dockerfile"
    bad.write_text("FROM redis:does-not-exist\nFROM ${UNSET_BASE}\n")
    failed = chain.warmer("pins", str(bad))
    assert failed.exit_code == 1
    assert "redis:does-not-exist: cannot resolve" in failed.stderr
    assert "Dockerfile:2" in failed.stderr  # the unresolvable reference, named with its line
    assert "Traceback" not in failed.output
    missing = chain.warmer("pins", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "no such file or directory" in missing.stderr
