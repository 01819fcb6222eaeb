"""A mirror run as several instances, each with its own cache, is warmed instance by instance."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from warmer.cli.main import cli
from warmer.sandbox.procs import Proc
from warmer.sandbox.topology import Sandbox
from warmer.store.ledger import Ledger

RegistryFactory = Callable[..., Proc]


def _stored(proc: Proc, digest: str) -> bool:
    """Whether the registry's own storage holds the blob (its cache, not a proxied answer).

    A mirror stores a proxied blob in the background: give it a bounded moment."""
    hexpart = digest.split(":", 1)[1]
    root = Path(proc.log).parent / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    for _ in range(50):
        if (root / hexpart[:2] / hexpart / "data").is_file():
            return True
        time.sleep(0.1)
    return False


def _config(tmp: Path, front: str, central: str, replicas: list[str], shared: bool) -> Path:
    text = f"""
[database]
url = "sqlite:///{tmp / "w.db"}"
[upstreams.dockerhub]
url = "{front}"
aliases = ["docker.io"]
ratelimit_reserve = 0
[mirrors.central]
url = "{central}"
parent = "dockerhub"
[mirrors.eu]
url = "{replicas[0]}"
parent = "central"
replicas = {json.dumps(replicas)}
shared_storage = {"true" if shared else "false"}
[regions.eu]
mirrors = ["eu"]
"""
    path = tmp / "w.toml"
    path.write_text(text)
    return path


def test_each_replica_is_warmed(
    sandbox: Sandbox, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    central = registry_factory("central", parent_url=sandbox.front_url)
    eu1 = registry_factory("eu1", parent_url=central.url)
    eu2 = registry_factory("eu2", parent_url=central.url)
    try:
        cfg = _config(tmp_path, sandbox.front_url, central.url, [eu1.url, eu2.url], False)
        sandbox.front.reset()
        result = CliRunner().invoke(
            cli, ["--config", str(cfg), "run", "--region", "eu", "python:3.12", "--json"]
        )
        assert result.exit_code == 0, result.output
        ledger = Ledger(f"sqlite:///{tmp_path / 'w.db'}")
        items = ledger.items(ledger.recent_runs(1)[0].id or 0)
        assert {i.instance for i in items if i.mirror == "eu"} == {eu1.url, eu2.url}
        per_instance = Counter(i.instance for i in items if i.mirror == "eu")
        assert per_instance[eu1.url] == per_instance[eu2.url] > 0
        blobs = {i.digest for i in items if i.kind == "blob"}
        for digest in blobs:
            assert _stored(eu1, digest) and _stored(eu2, digest), digest
            # The central tier fetched each blob once for both instances (2 GETs upstream).
            assert sandbox.front.stats()["blobs"][digest]["GET"] == 2
        # Planning again: both instances are known warm.
        again = CliRunner().invoke(
            cli, ["--config", str(cfg), "plan", "--region", "eu", "python:3.12", "--json"]
        )
        assert json.loads(again.output.strip().splitlines()[-1])["items"] == []
    finally:
        for p in (eu2, eu1, central):
            p.stop()


def test_shared_storage_replicas_are_warmed_once(
    sandbox: Sandbox, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    central = registry_factory("central", parent_url=sandbox.front_url)
    eu1 = registry_factory("eu1", parent_url=central.url)
    try:
        cfg = _config(
            tmp_path, sandbox.front_url, central.url, [eu1.url, "http://127.0.0.1:9"], True
        )
        result = CliRunner().invoke(
            cli, ["--config", str(cfg), "plan", "--region", "eu", "python:3.12", "--json"]
        )
        assert result.exit_code == 0, result.output
        plan = json.loads(result.output.strip().splitlines()[-1])
        eu_items = [i for i in plan["items"] if i["mirror"] == "eu"]
        assert eu_items and {i["instance"] for i in eu_items} in ({None}, {""})
    finally:
        for p in (eu1, central):
            p.stop()
