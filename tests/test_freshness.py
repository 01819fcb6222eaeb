"""The pure freshness decisions: moves, stale tiers and for how long, renewal, pins; and the
config of invalidation hooks."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict

import pytest

from warmer.config import ConfigError, InvalidateHook, RefreshConfig, load, parse_config
from warmer.upkeep import freshness as fr

T0 = datetime(2024, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)
A, B, C = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64


class PinPlace(TypedDict):
    """The arguments of ``pin_advice`` that are the same for every reference of a test."""

    file: str
    line: int
    name: str
    tag: str | None
    now: datetime


def test_unchanged_tag_is_no_drift() -> None:
    v = fr.assess(A, [fr.Seen(A, T0)], [fr.TierAnswer("central", 0, A)], T0 + H)
    assert not v.moved and not v.drift and v.stale == () and v.new_since == T0
    assert fr.needs_warm(v, {"central": True}) is None


def test_moved_tag_bounds_the_move_by_the_last_old_observation() -> None:
    history = [fr.Seen(A, T0), fr.Seen(A, T0 + H)]
    v = fr.assess(
        B, history, [fr.TierAnswer("central", 0, B), fr.TierAnswer("eu", 1, A)], T0 + 3 * H
    )
    assert v.moved and v.old_digest == A and v.moved_after == T0 + H
    assert v.new_since == T0 + 3 * H
    (stale,) = v.stale
    assert (stale.mirror, stale.served, stale.since, stale.seconds) == ("eu", A, T0 + H, 7200.0)
    assert fr.needs_warm(v, {"central": True, "eu": True}) == (
        f"moved {fr.short(A)} -> {fr.short(B)}"
    )


def test_tier_stale_since_the_upstream_first_showed_the_new_digest() -> None:
    history = [fr.Seen(A, T0), fr.Seen(B, T0 + H), fr.Seen(B, T0 + 2 * H)]
    v = fr.assess(B, history, [fr.TierAnswer("cache", 0, A)], T0 + 5 * H)
    assert not v.moved and v.drift
    assert v.stale[0].since == T0 + H and v.stale[0].seconds == 4 * 3600
    assert fr.needs_warm(v, {"cache": True}) == "stale at cache"


def test_no_history_and_unanswered_tiers() -> None:
    v = fr.assess(A, [], [fr.TierAnswer("eu", 1, None, "down")], T0)
    assert not v.drift and v.old_digest is None
    v2 = fr.assess(A, [], [fr.TierAnswer("eu", 1, B)], T0)
    assert v2.stale[0].since is None and v2.stale[0].seconds is None


def test_renewal_margin_and_expiry() -> None:
    assert fr.expiring(T0 + H, T0, 2 * H)
    assert not fr.expiring(T0 + 3 * H, T0, 2 * H)
    assert fr.expiring(T0 - H, T0, timedelta(0))  # already expired
    assert not fr.expiring(None, T0, 2 * H)  # no TTL: never expires
    v = fr.assess(A, [fr.Seen(A, T0)], [], T0 + H)
    assert fr.needs_warm(v, {"eu": False, "central": True}) == "expires soon or not held at eu"


def test_foreign_digest_is_one_the_upstream_never_had() -> None:
    history = [fr.Seen(A, T0), fr.Seen(B, T0 + H)]
    assert not fr.foreign(A, history, B)  # older, legitimate: stale
    assert fr.foreign(C, history, B)
    assert not fr.foreign(B, history, B)


def test_moved_away_at_and_pin_advice() -> None:
    history = [fr.Seen(A, T0), fr.Seen(A, T0 + H), fr.Seen(B, T0 + 2 * H), fr.Seen(C, T0 + 3 * H)]
    assert fr.moved_away_at(history, A) == T0 + 2 * H
    assert fr.moved_away_at(history, B) == T0 + 3 * H
    assert fr.moved_away_at(history, C) is None
    assert fr.moved_away_at(history, "sha256:" + "d" * 64) is None
    now = T0 + 26 * H
    common: PinPlace = {
        "file": "Dockerfile",
        "line": 1,
        "name": "python:3.12",
        "tag": "3.12",
        "now": now,
    }
    moved = fr.pin_advice(reference="r", pinned=A, current=C, history=history, **common)
    assert moved.status == "moved" and moved.moved_at == T0 + 2 * H
    assert moved.ago_seconds == 24 * 3600 and moved.pin == f"python:3.12@{C}"
    same = fr.pin_advice(reference="r", pinned=C, current=C, history=history, **common)
    assert same.status == "current"
    loose = fr.pin_advice(reference="r", pinned=None, current=C, history=[], **common)
    assert loose.status == "unpinned" and loose.pin == f"python:3.12@{C}"
    lost = fr.pin_advice(
        reference="r", pinned=None, current=None, history=[], error="404", **common
    )
    assert lost.status == "unknown" and lost.pin is None and lost.as_dict()["error"] == "404"
    unknown_when = fr.pin_advice(reference="r", pinned=B, current=A, history=[], **common)
    assert unknown_when.status == "moved" and unknown_when.moved_at is None


BASE = """
[upstreams.hub]
url = "http://127.0.0.1:1"
[mirrors.central]
url = "http://127.0.0.1:2"
parent = "hub"
"""


def test_invalidate_hook_config() -> None:
    ok = parse_config(
        tomllib.loads(
            BASE
            + '[mirrors.central.invalidate]\nurl = "http://127.0.0.1:9/purge/{repository}"\nheaders_env = { Authorization = "TOKEN" }\n'
        )
    )
    hook = ok.mirrors["central"].invalidate
    assert (
        hook is not None
        and hook.method == "POST"
        and hook.headers_env == {"Authorization": "TOKEN"}
    )
    cmd = parse_config(
        tomllib.loads(
            BASE + '[mirrors.central.invalidate]\ncommand = ["purge", "{tag}"]\ntimeout = "5s"\n'
        )
    )
    assert cmd.mirrors["central"].invalidate == InvalidateHook(
        command=["purge", "{tag}"], timeout=timedelta(seconds=5)
    )
    for bad, fragment in [
        ('url = "http://x"\ncommand = ["y"]\n', "exactly one of url"),
        ('method = "GET"\n', "exactly one of url"),
        ('url = "ftp://x"\n', "is not an http(s) URL"),
        ('url = "http://x"\nretries = 3\n', "mirrors.central.invalidate.retries: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            parse_config(tomllib.loads(BASE + "[mirrors.central.invalidate]\n" + bad))
    with pytest.raises(ConfigError, match=r"refresh\.renew_before"):
        parse_config(tomllib.loads(BASE + '[refresh]\nrenew_before = "soon"\n'))


def test_example_documents_the_freshness_keys() -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    cfg = load(example)
    assert cfg.refresh == RefreshConfig(renew_before=timedelta(hours=24), concurrency=8)
    text = example.read_text()
    missing = [
        f"{m.__name__}.{name}"
        for m in (InvalidateHook, RefreshConfig)
        for name in m.model_fields
        if not re.search(rf"(^|[\s#\[{{.]){name}\b", text, re.M)
    ]
    assert missing == [] and "[refresh]" in text and "invalidate]" in text
