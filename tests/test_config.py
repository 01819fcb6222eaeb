"""The config model: every key documented, errors that name file and key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from warmer.cli.main import cli
from warmer.config import ConfigError, load, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"

BASE = """
[upstreams.hub]
url = "http://127.0.0.1:1"
aliases = ["docker.io"]
[mirrors.central]
url = "http://127.0.0.1:2"
parent = "hub"
[mirrors.eu]
url = "http://127.0.0.1:3"
parent = "central"
[regions.eu]
mirrors = ["eu"]
"""


def test_example_loads_and_documents_every_key() -> None:
    cfg = load(EXAMPLE)
    assert cfg.chain("eu") == ["central", "eu"]
    assert cfg.mirrors["central"].link.bandwidth == 40_000_000
    text = EXAMPLE.read_text()
    # Every field of every model is named in the example (commented or not).
    from warmer import config as c

    # Every model of the config module, so a new section cannot go undocumented.
    models = [
        v
        for v in vars(c).values()
        if isinstance(v, type)
        and issubclass(v, BaseModel)
        and v.__module__ == c.__name__
        and not v.__name__.startswith("_")
    ]
    assert len(models) > 15
    missing = [
        f"{m.__name__}.{name}"
        for m in models
        for name in m.model_fields
        if not re.search(rf"(^|[\s#\[{{.]){name}\b", text, re.M)
    ]
    assert missing == []


def test_topology_helpers() -> None:
    cfg = parse_config(tomllib.loads(BASE))
    assert cfg.tier("central") == 0 and cfg.tier("eu") == 1
    assert cfg.upstream_of("eu") == "hub"
    assert cfg.upstream_for_registry("docker.io") == "hub"
    assert cfg.upstream_for_registry("ghcr.io") is None
    assert cfg.mirrors["eu"].instances() == ["http://127.0.0.1:3"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (
            '[mirrors.eu.link]\nbandwidth = "fast"\n',
            "mirrors.eu.link.bandwidth: 'fast' is not a rate",
        ),
        ("[mirrors.eu.linkk]\nx = 1\n", "mirrors.eu.linkk: unknown key"),
        (
            '[regions.us]\nmirrors = ["nowhere"]\n',
            "regions.us.mirrors[0]: unknown mirror 'nowhere'",
        ),
        ('[regions.us]\nmirrors = ["eu"]\nbudget = "lots"\n', "regions.us.budget"),
        (
            '[regions.us]\nmirrors = ["eu"]\nwindows = [{ cron = "0 1 * *", duration = "1h" }]\n',
            "windows[0]: window cron",
        ),
        (
            '[regions.us]\nmirrors = ["eu"]\nwindows = [{ cron = "0 1 * * *", duration = "1h", timezone = "Nowhere/City" }]\n',
            "unknown time zone",
        ),
        (
            '[mirrors.x]\nurl = "http://127.0.0.1:4"\nparent = "ghost"\n',
            "neither an upstream nor a mirror",
        ),
        ('[mirrors.x]\nurl = "ftp://h"\nparent = "hub"\n', "mirrors.x.url"),
        (
            '[mirrors.x]\nurl = "http://h"\nparent = "hub"\nnaming = "prefix"\n',
            "non-empty path_prefix",
        ),
        ("[database]\nurll = 1\n", "database.urll: unknown key"),
        ("[upstreams.hub.credentials]\npassword = 'x'\n", "unknown key"),
    ],
)
def test_errors_name_the_key(extra: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_loop_detected() -> None:
    data = tomllib.loads(BASE)
    data["mirrors"]["central"]["parent"] = "eu"
    with pytest.raises(ConfigError, match="loops"):
        parse_config(data)


def test_prefix_naming() -> None:
    data = tomllib.loads(BASE)
    data["mirrors"]["central"].update(naming="prefix", path_prefix="hub-proxy")
    cfg = parse_config(data)
    assert cfg.mirrors["central"].repository_for("library/python") == "hub-proxy/library/python"


def test_config_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    r = CliRunner().invoke(cli, ["--config", str(good), "config", "check"])
    assert r.exit_code == 0, r.output
    assert "mirror eu (tier 1): hub -> central -> eu" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + "[mirrors.eu.oops]\n")
    r = CliRunner().invoke(cli, ["--config", str(bad), "config", "check"])
    assert r.exit_code == 2
    assert "mirrors.eu.oops: unknown key" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--config", str(tmp_path / "none.toml"), "config", "check"])
    assert r.exit_code == 2 and "not found" in r.output


def test_readme_config_reference_names_every_key() -> None:
    from warmer import config as c

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Configuration reference", 1)[1].split("\n## ", 1)[0]
    models = [
        v
        for v in vars(c).values()
        if isinstance(v, type)
        and issubclass(v, BaseModel)
        and v.__module__ == c.__name__
        and not v.__name__.startswith("_")
    ]
    missing = [
        f"{m.__name__}.{name}"
        for m in models
        for name in m.model_fields
        if not re.search(rf"[.`*]{name}\b|`{name}`", section)
    ]
    assert missing == []
