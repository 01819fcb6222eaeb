"""The config model: every key documented, errors that name file and key."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from warmer.cli.main import cli
from warmer.config import ConfigError, load, parse_config
from warmer.units import MAX_BYTES, MAX_DURATION, UnitError, parse_duration, parse_rate, parse_size

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


# -- hostile values: property-based -----------------------------------------------------------

# What TOML can hold: scalars of each type, arrays and tables of them.
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["0", "0s", "0B/s", "1e9", "-1h", "999999999w", "1.5.5GB", "unlimited", ""]),
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC))),
)
TOML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
# A unit-ish string: digits, dots, units, spaces and signs in any order.
UNIT_TEXT = st.text(alphabet="0123456789.-+ eEkKmMgGtTiIbBsShHdDwW/p", max_size=24)


def _base() -> dict[str, Any]:
    data = tomllib.loads(BASE)
    data["regions"]["eu"]["windows"] = [{"cron": "0 1 * * *", "duration": "3h"}]
    data["mirrors"]["central"]["invalidate"] = {"url": "http://127.0.0.1:9/purge"}
    data["upstreams"]["hub"]["credentials"] = {"username": "u", "password_env": "P"}
    return data


def _paths(model: type[BaseModel], value: Any, prefix: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Every key of the config, reached through the instances in ``value`` (a dict)."""
    out: list[tuple[Any, ...]] = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        out.append(path)
        sub = value.get(name) if isinstance(value, dict) else None
        ann = field.annotation
        for arg in (ann, *getattr(ann, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _paths(arg, sub or {}, path)
            inner = getattr(arg, "__args__", ())
            if inner and isinstance(inner[-1], type) and issubclass(inner[-1], BaseModel):
                if isinstance(sub, dict):  # dict[str, Model]: each entry of the base
                    for key, entry in sub.items():
                        out += _paths(inner[-1], entry, (*path, key))
                elif isinstance(sub, list):  # list[Model]: each item of the base
                    for i, entry in enumerate(sub):
                        out += _paths(inner[-1], entry, (*path, i))
    return out


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    cur: Any = data
    for key in path[:-1]:
        if isinstance(key, int):
            cur = cur[key]
        else:
            cur = cur.setdefault(key, {})
            if not isinstance(cur, dict):
                return
    cur[path[-1]] = value


def _all_paths() -> list[tuple[Any, ...]]:
    from warmer.config import Config

    return _paths(Config, _base(), ())


def test_the_fuzzed_paths_cover_every_section() -> None:
    joined = {".".join(map(str, p)) for p in _all_paths()}
    for key in (
        "regions.eu.budget",
        "regions.eu.windows.0.duration",
        "mirrors.eu.link.bandwidth",
        "mirrors.central.invalidate.headers",
        "upstreams.hub.credentials.password_env",
        "database.url",
        "serve.metrics_host",
        "serve.verify.sample",
        "analytics.regions.default",
        "run.timeout",
    ):
        assert key in joined, key
    assert len(joined) > 80


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_at_any_key_is_accepted_or_a_config_error(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(_all_paths()), label="path")
    value = data.draw(TOML_VALUES, label="value")
    raw = _base()
    _set(raw, path, value)
    try:
        parse_config(raw, "fuzz.toml")
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith("fuzz.toml: ") and len(text.splitlines()) == 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), TOML_VALUES, max_size=4))
def test_any_top_level_table_is_accepted_or_a_config_error(raw: dict[str, Any]) -> None:
    try:
        parse_config(raw)
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1  # one line, whatever the keys hold


@settings(max_examples=300, deadline=None)
@given(st.one_of(TOML_VALUES, UNIT_TEXT))
def test_unit_parsers_return_in_range_or_raise_unit_error(value: Any) -> None:
    for parse, top in ((parse_size, MAX_BYTES), (parse_rate, MAX_BYTES)):
        try:
            n = parse(value)
        except UnitError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 200
        else:
            assert isinstance(n, int) and 0 <= n <= top
            assert parse is not parse_rate or n >= 1
    try:
        d = parse_duration(value)
    except UnitError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
    else:
        assert timedelta(0) <= d <= MAX_DURATION
        datetime.now(UTC) + d  # a date, not an OverflowError


@given(st.integers(min_value=0, max_value=MAX_BYTES))
def test_sizes_and_rates_read_back_their_number(n: int) -> None:
    assert parse_size(n) == n and parse_size(str(n)) == n
    if n:
        assert parse_rate(f"{n}/s") == n


@given(st.integers(min_value=0, max_value=int(MAX_DURATION.total_seconds())))
def test_durations_read_back_their_seconds(n: int) -> None:
    assert parse_duration(f"{n}s") == timedelta(seconds=n) == parse_duration(n)


@pytest.mark.parametrize(
    ("parse", "value", "fragment"),
    [
        (parse_size, [1], "[1] is not a size"),
        (parse_size, float("inf"), "not a finite number"),
        (parse_size, "99999999999999TiB", "too large"),
        (parse_rate, "0MB/s", "less than 1 B/s"),
        (parse_rate, "0.5B/s", "less than 1 B/s"),
        (parse_rate, -5, "rate -5: negative"),
        (parse_duration, float("inf"), "not a finite number"),
        (parse_duration, "999999999w", "too long"),
        (parse_duration, {"a": 1}, "is not a duration"),
        (parse_duration, True, "is not a duration"),
    ],
)
def test_unit_errors_say_why(parse: Any, value: Any, fragment: str) -> None:
    with pytest.raises(UnitError, match=re.escape(fragment)):
        parse(value)
