"""The sandbox: catalogue, seeding, topology, CLI, and a real client pulling through it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from warmer.config import load
from warmer.oci.manifest import MANIFEST_ACCEPT
from warmer.sandbox.catalogue import OCI_INDEX, build, moved
from warmer.sandbox.procs import Proc
from warmer.sandbox.seed import move_tag, run_sync, seed
from warmer.sandbox.topology import Sandbox

RegistryFactory = Callable[..., Proc]


def _host(url: str) -> str:
    return url.removeprefix("http://")


def _skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    # As a CI job pulling through a cold mirror chain would: distribution 2.8 sometimes
    # answers 500 when a client's HEAD and GET of one cold blob reach a proxy at once.
    # skopeo's --retry-times does not retry a blob read that got a 500 ("reading blob ...:
    # invalid status code from registry 500"), so such a copy is run again, twice at most,
    # as a CI job's retry would; any other failure fails at once.
    copy = bool(args) and args[0] == "copy"
    retry = ["--retry-times", "3"] if copy else []
    for attempt in range(3):
        out = subprocess.run(
            ["skopeo", *args[:1], *retry, *args[1:]], capture_output=True, timeout=120
        )
        race = b"invalid status code from registry 500" in out.stderr
        if out.returncode == 0 or not (copy and race) or attempt == 2:
            break
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out


def _head_digest(url: str, repository: str, reference: str) -> str:
    accept = {"Accept": MANIFEST_ACCEPT}
    r = httpx.head(f"{url}/v2/{repository}/manifests/{reference}", headers=accept)
    assert r.status_code == 200, (repository, reference, r.status_code)
    return r.headers["Docker-Content-Digest"]


# --- catalogue (pure) ---------------------------------------------------------------------


def test_catalogue_shape() -> None:
    cat = build(seed=3, scale=0.01)
    assert {"library/debian", "library/python", "library/node", "library/golang"} <= set(
        cat.repositories
    )
    assert any(r.startswith("someorg/") for r in cat.repositories)
    py = cat.tag("library/python", "3.12")
    assert py.index and py.media_type == OCI_INDEX
    assert [i.platform for i in py.images] == ["linux/amd64", "linux/arm64"]
    # a family shares its base: python:3.12 and node:22 start on the same debian layer
    debian = cat.tag("library/debian", "bookworm").image().layers[0]
    assert py.image().layers[0] == debian == cat.tag("library/node", "22").image().layers[0]
    assert py.image("linux/arm64").layers[0] != debian  # each arch has its own bytes
    # tags of a family share family layers; aliases are the same manifest
    assert py.image().layers[1] == cat.tag("library/python", "3.11").image().layers[1]
    assert cat.tag("library/python", "latest").digest == py.digest
    config = json.loads(py.image().config)
    assert config["rootfs"]["diff_ids"] == [x.digest for x in py.image().layers]
    app = cat.tag("someorg/app", "v1.1")
    assert not app.index and "docker" in app.media_type
    sizes = sorted(x.size for x in cat.layers().values())
    assert sizes[-1] > 5 * sizes[len(sizes) // 2]  # heavy tail: the largest dwarfs the median
    assert 1_000_000 < cat.total_bytes() < 5_000_000


def test_catalogue_default_scale_is_a_few_hundred_mb() -> None:
    sizes = {x.size for x in build(seed=0, scale=1.0).layers().values()}
    assert 300e6 < sum(sizes) < 700e6


def test_same_seed_same_digests_across_interpreters() -> None:
    code = (
        "from warmer.sandbox.catalogue import build\n"
        "print([t.digest for t in build(11, 0.005).tags])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, text=True)
    assert other.returncode == 0, other.stderr
    here = [t.digest for t in build(11, 0.005).tags]
    assert other.stdout.strip() == str(here)
    assert here != [t.digest for t in build(12, 0.005).tags]


def test_moved_tag_adds_one_top_layer() -> None:
    cat = build(seed=4, scale=0.01)
    old = cat.tag("library/golang", "1.23")
    new, again = moved(cat, "library/golang", "1.23"), moved(cat, "library/golang", "1.23", 2)
    assert len({old.digest, new.digest, again.digest}) == 3
    for before, after in zip(old.images, new.images, strict=True):
        assert after.layers[:-1] == before.layers and len(after.layers) == len(before.layers) + 1
    assert moved(cat, "library/golang", "1.23").digest == new.digest  # deterministic too


# --- seeding a real registry --------------------------------------------------------------


def test_seed_is_deterministic_and_idempotent(registry_factory: RegistryFactory) -> None:
    cat = build(seed=21, scale=0.005).only("library/debian", "library/python", "someorg/app")
    a = registry_factory("seed-a")
    first = run_sync(seed(a.url, cat))
    assert first.tags == len(cat.tags) and first.blobs_mounted > 0  # shared layers are mounted
    for tag in cat.tags:
        assert _head_digest(a.url, tag.repository, tag.tag) == tag.digest
    again = run_sync(seed(a.url, build(seed=21, scale=0.005).only("library/python")))
    assert again.blobs_present > 0 and again.blobs_pushed == 0 and again.bytes_pushed == 0


def test_move_tag_changes_only_that_tag(registry_factory: RegistryFactory) -> None:
    cat = build(seed=22, scale=0.005)
    reg = registry_factory("move")
    run_sync(seed(reg.url, cat.only("library/python"), fresh=True))
    old = cat.tag("library/python", "3.12")
    new = run_sync(move_tag(reg.url, cat, "library/python", "3.12"))
    assert new.digest != old.digest
    assert _head_digest(reg.url, "library/python", "3.12") == new.digest
    assert _head_digest(reg.url, "library/python", "latest") == old.digest  # alias not moved
    newer = run_sync(move_tag(reg.url, cat, "library/python", "3.12", generation=2))
    assert _head_digest(reg.url, "library/python", "3.12") == newer.digest != new.digest


# --- the running topology -----------------------------------------------------------------


def test_skopeo_through_eu_gets_upstream_digests(sandbox: Sandbox, tmp_path: Path) -> None:
    tag = sandbox.catalogue.tag("library/python", "3.12")
    image = tag.image("linux/amd64")
    src = f"docker://{_host(sandbox.eu_url)}/library/python:3.12"
    raw_eu = _skopeo("inspect", "--raw", "--tls-verify=false", src).stdout
    upstream = f"docker://{_host(sandbox.upstream_url)}/library/python:3.12"
    raw_up = _skopeo("inspect", "--raw", "--tls-verify=false", upstream).stdout
    assert raw_eu == raw_up == tag.manifest

    out = tmp_path / "python"
    _skopeo("--override-os", "linux", "--override-arch", "amd64", "copy", "--src-tls-verify=false", src, f"dir:{out}")  # fmt: skip
    assert (out / "manifest.json").read_bytes() == image.manifest
    for layer in image.layers:
        data = (out / layer.digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
    config = (out / image.config_digest.removeprefix("sha256:")).read_bytes()
    assert config == image.config

    # the bytes really came down the chain, through the front
    stats = sandbox.front.stats()
    blobs = stats["blobs"]
    assert all(blobs[x.digest]["GET"] >= 1 for x in image.layers)
    assert stats["repositories"]["library/python"]["bytes_served"] >= sum(
        x.size for x in image.layers
    )


def test_docker_format_app_through_us(sandbox: Sandbox, tmp_path: Path) -> None:
    tag = sandbox.catalogue.tag("someorg/app", "v1.1")
    src = f"docker://{_host(sandbox.us_url)}/someorg/app:v1.1"
    _skopeo("copy", "--src-tls-verify=false", src, f"dir:{tmp_path / 'app'}")
    assert (tmp_path / "app" / "manifest.json").read_bytes() == tag.manifest


def test_front_rate_limits_through_the_mirrors(sandbox: Sandbox) -> None:
    sandbox.front.configure(ratelimit_limit=0, ratelimit_reset=True)
    try:
        accept = {"Accept": OCI_INDEX}
        url = f"{sandbox.front_url}/v2/library/node/manifests/22"
        challenge = httpx.get(url, headers=accept)
        assert challenge.status_code == 401  # Docker Hub's flow: a token first
        scope = {"scope": "repository:library/node:pull"}
        token = httpx.get(f"{sandbox.front_url}/token", params=scope).json()["token"]
        r = httpx.get(url, headers={**accept, "Authorization": f"Bearer {token}"})
        assert r.status_code == 429 and "TOOMANYREQUESTS" in r.text
        assert r.headers["ratelimit-remaining"] == "0;w=21600"
        # a cold pull through central is refused upstream; central cannot serve it
        cold = httpx.get(f"{sandbox.central_url}/v2/library/golang/manifests/1.22", headers=accept)
        assert cold.status_code != 200
        assert sandbox.front.stats()["throttled"] >= 2
    finally:
        sandbox.front.configure(ratelimit_limit=10_000, ratelimit_reset=True)


def test_config_file_matches_topology(sandbox: Sandbox) -> None:
    cfg = load(sandbox.config_path)
    assert cfg.upstreams["dockerhub"].url == sandbox.front_url
    assert "docker.io" in cfg.upstreams["dockerhub"].aliases
    assert cfg.mirrors["central"].url == sandbox.central_url
    assert cfg.mirrors["central"].parent == "dockerhub"
    assert (cfg.mirrors["eu"].url, cfg.mirrors["eu"].parent) == (sandbox.eu_url, "central")
    assert (cfg.mirrors["us"].url, cfg.mirrors["us"].parent) == (sandbox.us_url, "central")
    assert cfg.regions["eu"].mirrors == ["eu"] and cfg.regions["us"].mirrors == ["us"]
    assert str(sandbox.directory) in cfg.database.url


def test_stop_never_signals_a_pid_it_does_not_own(tmp_path: Path) -> None:
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        state = {
            "seed": 0, "scale": 1.0, "settings": {}, "config": "",
            "processes": {"upstream": {"pid": decoy.pid, "url": "http://127.0.0.1:1", "log": "x", "marker": str(tmp_path / "config.yml")}},
        }  # fmt: skip
        (tmp_path / "state.json").write_text(json.dumps(state))
        box = Sandbox.load(tmp_path)
        assert box is not None
        assert box.status()[0]["alive"] is False  # the PID runs something else: not ours
        assert box.stop() == [{"name": "upstream", "pid": decoy.pid, "stopped": False}]
        assert decoy.poll() is None  # still running
    finally:
        decoy.kill()
        decoy.wait()


@pytest.mark.slow
def test_cli_up_status_down_stops_exact_pids(tmp_path: Path) -> None:
    d = tmp_path / "sb"

    def warmer(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "warmer.cli.main", "sandbox", *args, "--dir", str(d)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    up = warmer("up", "--scale", "0.002", "--seed", "5", "--json")
    assert up.returncode == 0, up.stderr
    shown = json.loads(up.stdout)
    assert shown["already_up"] is False and shown["seeded"]["tags"] == len(build(5, 0.002).tags)
    pids = {p["name"]: p["pid"] for p in shown["processes"]}
    assert set(pids) == {"upstream", "front", "central", "eu", "us"}
    try:
        again = warmer("up", "--json")
        assert json.loads(again.stdout)["already_up"] is True
        status = warmer("status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["up"] is True
        eu = next(p["url"] for p in shown["processes"] if p["name"] == "eu")
        assert (
            _head_digest(eu, "library/debian", "12")
            == build(5, 0.002).tag("library/debian", "12").digest
        )
    finally:
        down = warmer("down", "--json")
    assert down.returncode == 0, down.stderr
    stopped = {
        row["name"]: row["pid"] for row in json.loads(down.stdout)["stopped"] if row["stopped"]
    }
    assert stopped == pids
    for pid in pids.values():
        assert not Proc("x", pid, "", Path()).alive()
    assert warmer("status").returncode == 1
    # the front wrote its counters on the way out (SIGTERM)
    assert json.loads((d / "front-stats.json").read_text())["requests"]["manifest"]["HEAD"] >= 1


@pytest.mark.slow
def test_cli_status_names_a_registry_that_is_down(tmp_path: Path) -> None:
    d = tmp_path / "sb"

    def warmer(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "warmer.cli.main", "sandbox", *args, "--dir", str(d)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    up = warmer("up", "--scale", "0.002", "--seed", "6", "--json")
    assert up.returncode == 0, up.stderr
    procs = {p["name"]: p for p in json.loads(up.stdout)["processes"]}
    stopped_central = False
    try:
        ok = warmer("status")
        assert ok.returncode == 0 and ok.stderr == "", ok.stderr
        # a process that runs but does not answer (stopped by SIGSTOP) is down too
        os.kill(procs["central"]["pid"], signal.SIGSTOP)
        stopped_central = True
        hung = warmer("status", "--json")
        assert hung.returncode == 1
        rows = {r["name"]: r for r in json.loads(hung.stdout)["processes"]}
        assert rows["central"]["alive"] is True and rows["central"]["up"] is False
        assert hung.stderr.splitlines() == [
            f"error: sandbox in {d.resolve()}: down: central (pid {procs['central']['pid']} "
            f"running, {procs['central']['url']} not answering)"
        ]
        os.kill(procs["central"]["pid"], signal.SIGCONT)
        stopped_central = False
        assert warmer("status").returncode == 0
        # one registry stopped by its PID: exit 1, and stderr names it
        Proc("eu", procs["eu"]["pid"], "", Path()).stop()
        down = warmer("status")
        assert down.returncode == 1
        assert down.stderr.splitlines() == [
            f"error: sandbox in {d.resolve()}: down: eu (pid {procs['eu']['pid']} not running)"
        ]
        assert "Traceback" not in down.stderr
        lines = {line.split()[0]: line.split()[1] for line in down.stdout.splitlines()}
        assert lines["eu"] == "DOWN" and lines["us"] == "up" and lines["central"] == "up"
    finally:
        if stopped_central:
            os.kill(procs["central"]["pid"], signal.SIGCONT)
        gone = warmer("down", "--json")
    assert gone.returncode == 0, gone.stderr
    for p in procs.values():
        assert not Proc("x", p["pid"], "", Path()).alive()
