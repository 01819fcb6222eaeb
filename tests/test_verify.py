"""``warmer verify`` against real registries: a poisoned cache (a tier's stored blob file
corrupted on disk), a metadata cache answering a digest the upstream never had for the tag,
a stale (older, legitimate) answer, and sampling."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_refresh import Chain, RegistryFactory, StaleFront, make_chain

from warmer.upkeep.verify import verify
from warmer.warm.resolve import wants_from_args
from warmer.warm.run import prepare


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from make_chain(registry_factory, tmp_path)


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def blob_file(chain: Chain, mirror: str, digest: str) -> Path:
    """Where a distribution mirror keeps a blob: its rootdirectory's content-addressed store."""
    url = chain.mirrors[mirror]["url"]
    proc = next(p for p in chain.procs if p.url == url)
    hexpart = digest.split(":", 1)[1]
    return proc.log.parent / "data/docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def test_corrupted_blob_at_a_tier_is_an_incident_and_planned_again(chain: Chain) -> None:
    chain.warm("eu", "redis:7.4")
    ledger = chain.ledger()
    now = datetime.now(UTC)
    blobs = [h for h in ledger.holdings(["eu"], now) if h.kind == "blob"]
    victim = max(blobs, key=lambda h: h.size)
    total = len(ledger.holdings(["central", "eu"], now))
    corrupt(blob_file(chain, "eu", victim.digest))

    clean = asyncio.run(verify(chain.config(), ledger, region="eu", sample=1.0, now=now))
    assert not clean.ok
    (incident,) = clean.incidents
    assert (incident.kind, incident.mirror, incident.digest) == (
        "digest-mismatch",
        "eu",
        victim.digest,
    )
    assert incident.repository == "library/redis" and "hashes to sha256:" in incident.detail
    # Everything else read back fine, central's copy included.
    assert clean.objects == total - 1
    recorded = ledger.incidents()
    assert [(i.mirror, i.digest, i.kind) for i in recorded] == [
        ("eu", victim.digest, "digest-mismatch")
    ]
    assert victim.digest not in {h.digest for h in ledger.holdings(["eu"], now)}
    assert victim.digest in {h.digest for h in ledger.holdings(["central"], now)}

    # The item stops counting as warm: the next plan fetches it again at eu.
    cfg = chain.config()
    prepared = asyncio.run(prepare(cfg, ledger, "eu", wants_from_args(["redis:7.4"]), now=now))
    assert [(i.mirror, i.digest) for i in prepared.plan.items] == [("eu", victim.digest)]

    # Recorded once: the incident row is no longer warm, so it is not read again.
    assert asyncio.run(verify(cfg, ledger, region="eu", sample=1.0, now=now)).ok
    # A poisoned copy at central, found through the command line.
    second = next(h for h in blobs if h.digest != victim.digest)
    corrupt(blob_file(chain, "central", second.digest))
    cli = chain.warmer("verify", "--region", "eu")
    assert cli.exit_code == 1
    assert "INCIDENT digest-mismatch at central" in cli.stdout and second.digest in cli.stdout
    assert "Traceback" not in cli.output


def test_foreign_and_stale_tag_answers(chain: Chain) -> None:
    central = chain.mirrors["central"]["url"]
    stale = chain.loops.run(StaleFront(central).start())
    try:
        # A front (not distribution): its answers are no evidence for the reconcile.
        chain.mirrors["cache"] = {"url": stale.url, "parent": "dockerhub", "kind": "other"}
        del chain.mirrors["eu"]
        chain.regions = {"r": ["cache"]}
        chain.warm("r", "alpine:3.20", "alpine:3.19")
        old = chain.catalogue.tag("library/alpine", "3.20").digest
        other = chain.catalogue.tag("library/alpine", "3.19").digest
        new = chain.move("library/alpine", "3.20")
        ledger = chain.ledger()

        report = asyncio.run(
            verify(chain.config(), ledger, region="r", sample=1.0, now=datetime.now(UTC))
        )
        # An older digest the upstream had: stale, not an incident.
        assert report.ok and report.incidents == []
        assert [(f.mirror, f.digest) for f in report.stale] == [("cache", old)]
        assert new.digest in report.stale[0].detail

        # The metadata cache now answers 3.20 with 3.19's digest: never 3.20's upstream.
        async def poison() -> None:
            stale.tags[("library/alpine", "3.20")] = (other, time.monotonic())

        chain.loops.run(poison())
        cli = chain.warmer("verify", "--region", "r", "--json")
        assert cli.exit_code == 1
        out = json.loads(cli.stdout)
        assert out["ok"] is False
        (incident,) = out["incidents"]
        assert (incident["kind"], incident["mirror"], incident["digest"]) == (
            "foreign-digest",
            "cache",
            other,
        )
        assert "never had" in incident["detail"] and new.digest in incident["detail"]
        assert [(i.kind, i.digest) for i in ledger.incidents()] == [("foreign-digest", other)]
    finally:
        chain.loops.run(stale.close())


def test_sample_fraction_and_bad_sample(chain: Chain) -> None:
    chain.warm("eu", "redis:7.4")
    ledger = chain.ledger()
    now = datetime.now(UTC)
    total = len(ledger.holdings(["central", "eu"], now))
    half = asyncio.run(verify(chain.config(), ledger, region="eu", sample=0.5, now=now, seed=3))
    assert half.ok and half.objects == math.ceil(total * 0.5) < total
    again = asyncio.run(verify(chain.config(), ledger, region="eu", sample=0.5, now=now, seed=3))
    assert again.bytes == half.bytes  # the same sample for the same seed
    with pytest.raises(ValueError, match="sample"):
        asyncio.run(verify(chain.config(), ledger, region="eu", sample=0, now=now))
    bad = chain.warmer("verify", "--sample", "1.5")
    assert bad.exit_code == 2 and "--sample 1.5" in bad.stderr
