"""The usage store: aggregation, idempotent re-ingest, appended and rotated logs, frames."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pandas as pd

from analytics import store
from analytics.events import Event
from analytics.frames import USAGE_COLUMNS
from analytics.ingest import Options, ingest
from analytics.staticrefs import StaticRef
from warmer.oci.reference import parse
from warmer.sandbox.procs import Proc

LOGS = Path(__file__).parent / "data" / "logs"
AT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def url_for(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warmer.db'}"


def total(url: str) -> int:
    return int(store.usage_frame(url)["pulls"].sum())


def test_frame_columns_and_types(tmp_path: Path) -> None:
    url = url_for(tmp_path)
    ingest([LOGS / "github-job.log"], Options(default_time=AT), url=url)
    f = store.usage_frame(url)
    assert list(f.columns) == USAGE_COLUMNS
    assert str(f["day"].dtype) == "datetime64[ns]"
    assert {str(f[c].dtype) for c in ("hour", "pulls", "present", "pipelines")} == {"int64"}
    row = f[f["image"] == "docker.io/library/alpine"].iloc[0]
    assert (row["day"], row["hour"], row["tag"], row["source"]) == (
        pd.Timestamp("2024-05-01"),
        10,
        "3.19",
        "github",
    )
    assert (row["pulls"], row["present"], row["pipelines"]) == (1, 1, 1)
    assert row["region"] == ""


def test_reingest_is_idempotent_even_under_another_name(tmp_path: Path) -> None:
    url = url_for(tmp_path)
    ingest([LOGS], Options(default_time=AT), url=url)
    before = store.usage_frame(url)
    again = ingest([LOGS], Options(default_time=AT), url=url)
    assert again.events == 0 and again.unchanged == len(again.files)
    copy = tmp_path / "renamed.log"
    shutil.copy(LOGS / "docker-pull.log", copy)  # a rotated file: same content, new name
    assert ingest([copy], Options(default_time=AT), url=url).events == 0
    pd.testing.assert_frame_equal(store.usage_frame(url), before)


def test_appended_log_continues_from_offset_and_rewritten_restarts(tmp_path: Path) -> None:
    url = url_for(tmp_path)
    lines = (LOGS / "github-job.log").read_text().splitlines(keepends=True)
    cut = next(i for i, ln in enumerate(lines) if "Starting postgres" in ln)
    log = tmp_path / "job.log"
    log.write_text("".join(lines[:cut]))
    first = ingest([log], Options(default_time=AT), url=url)
    assert first.events == 2
    with open(log, "a") as f:
        f.write("".join(lines[cut:]))
    second = ingest([log], Options(default_time=AT), url=url)
    assert second.events == 2 and second.files[0].start > 0
    assert total(url) == 4
    # Same first KiB, different content after the recorded offset: read from the start.
    changed = "".join(lines[:cut]).replace("node:20-bookworm", "node:22-bookworm")
    assert changed[:1024] == "".join(lines[:cut])[:1024]
    log.write_text(changed)
    third = ingest([log], Options(default_time=AT), url=url)
    assert third.files[0].start == 0 and third.events == 2


def test_distinct_pipelines_are_exact_across_ingests(tmp_path: Path) -> None:
    url = url_for(tmp_path)
    ref = parse("python:3.12")
    ts = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)

    def ev(pipeline: str, pulled: bool) -> Event:
        return Event(ts, ref, None, "github", pipeline, "eu", pulled)

    assert store.add_events(url, [ev("a", True), ev("b", False)]) == 2
    assert store.add_events(url, [ev("a", True)]) == 1
    f = store.usage_frame(url, region="eu", since=date(2024, 5, 6), until="2024-05-07")
    assert f[["pulls", "present", "pipelines"]].values.tolist() == [[3, 1, 2]]
    assert store.usage_frame(url, region="us").empty
    assert store.usage_frame(url, since="2024-05-07").empty
    assert len(store.pipelines_frame(url)) == 2


def test_a_store_from_before_the_pipelines_column_is_counted_and_kept_counted(
    tmp_path: Path,
) -> None:
    """A database whose analytics tables are the first schema's (no ``pipelines`` column on
    the usage rows) gets the column counted from the pipelines table when it is opened,
    and later ingests keep the count through the trigger."""
    import sqlite3

    path = tmp_path / "old.db"
    key = "day DATE, hour INTEGER, region VARCHAR(128), image VARCHAR(512), tag VARCHAR(128),"
    key += " digest VARCHAR(160), source VARCHAR(32)"
    pk = "day, hour, region, image, tag, digest, source"
    p1, p2, p3 = (store.pipeline_hash(name) for name in ("p1", "p2", "p3"))
    con = sqlite3.connect(path)
    con.executescript(
        f"""
        CREATE TABLE analytics_usage ({key}, pulls BIGINT NOT NULL, present BIGINT NOT NULL,
            PRIMARY KEY ({pk}));
        CREATE TABLE analytics_usage_pipelines ({key}, pipeline VARCHAR(16),
            PRIMARY KEY ({pk}, pipeline));
        CREATE TABLE schema_migrations (component VARCHAR(64) NOT NULL,
            version INTEGER NOT NULL, PRIMARY KEY (component, version));
        INSERT INTO schema_migrations VALUES ('analytics', 1);
        INSERT INTO analytics_usage VALUES
            ('2024-05-06', 9, 'eu', 'docker.io/library/python', '3.12', '', 'github', 5, 0),
            ('2024-05-06', 10, 'eu', 'docker.io/library/python', '3.12', '', 'github', 1, 0);
        INSERT INTO analytics_usage_pipelines VALUES
            ('2024-05-06', 9, 'eu', 'docker.io/library/python', '3.12', '', 'github', '{p1}'),
            ('2024-05-06', 9, 'eu', 'docker.io/library/python', '3.12', '', 'github', '{p2}'),
            ('2024-05-06', 9, 'eu', 'docker.io/library/python', '3.12', '', 'github', '{p3}');
        """
    )
    con.commit()
    con.close()
    url = f"sqlite:///{path}"

    def counts() -> dict[int, tuple[int, int]]:
        f = store.usage_frame(url)
        return {int(r.hour): (int(r.pulls), int(r.pipelines)) for r in f.itertuples()}

    assert counts() == {9: (5, 3), 10: (1, 0)}
    ref = parse("python:3.12")
    at = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)
    events = [Event(at, ref, None, "github", name, "eu", True) for name in ("p1", "p4")]
    events.append(Event(at.replace(hour=10), ref, None, "github", "p1", "eu", True))
    store.add_events(url, events)
    # p1 was there already; p4 is new in hour 9, p1 new in hour 10.
    assert counts() == {9: (7, 4), 10: (2, 1)}
    want = store.pipelines_frame(url).groupby("hour").size().to_dict()
    assert {h: c[1] for h, c in counts().items()} == want


def test_static_refs_keep_first_seen_and_drop_removed(tmp_path: Path) -> None:
    url = url_for(tmp_path)
    t0, t1 = datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
    py, node = parse("python:3.12"), parse("node:20")
    store.add_static_refs(
        url,
        [
            StaticRef("Dockerfile", 1, py, "dockerfile", "FROM"),
            StaticRef("Dockerfile", 5, node, "dockerfile", "FROM"),
        ],
        now=t0,
    )
    # The python line moved, the node line was removed.
    store.add_static_refs(url, [StaticRef("Dockerfile", 3, py, "dockerfile", "FROM")], now=t1)
    f = store.static_frame(url)
    assert f[["file", "line", "reference", "image", "tag"]].values.tolist() == [
        ["Dockerfile", 3, "docker.io/library/python:3.12", "docker.io/library/python", "3.12"]
    ]
    assert f["first_seen"].iloc[0] == pd.Timestamp(t0)
    store.add_static_refs(url, [], files=["Dockerfile"], now=t1)
    assert store.static_frame(url).empty


def test_real_registry_log_ingests_as_pulls(plain_registry: Proc, tmp_path: Path) -> None:
    """Requests against a real distribution registry; its own log is ingested."""
    u = plain_registry.url
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cdig = "sha256:" + hashlib.sha256(cfg).hexdigest()
    with httpx.Client(base_url=u, timeout=10) as c:
        loc = c.post("/v2/ingest-test/app/blobs/uploads/").headers["location"]
        sep = "&" if "?" in loc else "?"
        assert c.put(f"{loc}{sep}digest={cdig}", content=cfg).status_code == 201
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": cdig,
                    "size": len(cfg),
                },
                "layers": [],
            }
        ).encode()
        mt = {"content-type": "application/vnd.oci.image.manifest.v1+json"}
        r = c.put("/v2/ingest-test/app/manifests/1.0", content=manifest, headers=mt)
        assert r.status_code == 201
        digest = r.headers["docker-content-digest"]
        accept = {"accept": mt["content-type"], "user-agent": "docker/24.0.7 go/go1.20.10"}
        assert c.head("/v2/ingest-test/app/manifests/1.0", headers=accept).status_code == 200
        assert c.get(f"/v2/ingest-test/app/manifests/{digest}", headers=accept).status_code == 200
        assert c.get("/v2/ingest-test/app/manifests/nope", headers=accept).status_code == 404
    log = tmp_path / "registry.log"
    shutil.copy(plain_registry.log, log)  # a snapshot: the shared registry keeps logging
    out: list[Event] = []
    ingest([log], Options(upstream="registry.test"), on_event=out.append)
    mine = [e for e in out if e.reference.repository == "ingest-test/app"]
    assert [(str(e.reference), e.digest, e.pulled) for e in mine] == [
        ("registry.test/ingest-test/app:1.0", digest, True)
    ]
    assert mine[0].source == "distribution"


def _open_ledger(url: str) -> str:
    from warmer.store.ledger import Ledger

    try:
        Ledger(url).recent_runs(1)
    except Exception as exc:  # reported to the parent: the test names what went wrong
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_first_use_by_several_processes_at_once_creates_the_schema_once(tmp_path: Path) -> None:
    """Four processes opening a new SQLite file at once: each migrates or waits, none fails
    (before the write lock was taken first, about one in three such starts failed with
    'table ... already exists' or a duplicate schema_migrations row)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for n in range(3):
            url = f"sqlite:///{tmp_path / f'new{n}.db'}"
            assert pool.map(_open_ledger, [url] * 4) == ["ok"] * 4
