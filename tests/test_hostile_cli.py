"""Hostile input on the command line: numeric ranges, image references, bundle files.

Every case must end with exit 2 (bad usage or input) or 1 (failed work), never a traceback
(an exception escaping the command), with the error on stderr naming the thing, and nothing
pushed or written where it should not be. Errors raised by the warmer itself are exactly one
line; click's own usage errors add a "Usage:" and a "Try --help" line around their one
"Error:" line, so for those the one error line is what is checked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from warmer.bundle.bundlefile import BUNDLE_FILE
from warmer.bundle.ocilayout import blob_relpath
from warmer.cli.main import cli
from warmer.oci.registry import NotFound, RegistryClient
from warmer.sandbox.catalogue import build
from warmer.sandbox.procs import Proc
from warmer.sandbox.seed import run_sync, seed

IMAGE = "someorg/app:v1.1"  # a single-platform image: a small bundle


def invoke(args: list[str], cwd: Path, config: Path | None = None) -> Result:
    """``warmer ARGS`` in process, in ``cwd``, with no config unless one is given."""
    argv = ["--config", str(config)] if config else []
    env = {"WARMER_CONFIG": ""} if config is None else {}
    assert Path.cwd() == cwd  # the cwd fixture moved there
    return CliRunner(env=env).invoke(cli, [*argv, *args])


def assert_clean_error(result: Result, codes: tuple[int, ...], *named: str) -> str:
    """Exit in ``codes``, no escaped exception, one error line on stderr naming ``named``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"escaped: {result.exception!r}"
    )
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.exit_code in codes, (result.exit_code, result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    assert len(errors) == 1, result.stderr
    if not lines[0].startswith("Usage:"):  # the warmer's own errors: exactly one line
        assert len(lines) == 1, result.stderr
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory of the case, checked afterwards: nothing written in it."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert left == [], f"files left in the working directory: {left}"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config with regions eu and us; its mirrors are never reached by these cases."""
    d = tmp_path_factory.mktemp("hostile-config")
    path = d / "warmer.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{d / "warmer.db"}"
[upstreams.hub]
url = "http://127.0.0.1:9"
aliases = ["docker.io"]
[mirrors.central]
url = "http://127.0.0.1:9"
parent = "hub"
[regions.eu]
mirrors = ["central"]
[regions.us]
mirrors = ["central"]
"""
    )
    return path


# --- numeric options: negative, zero, huge, not a number ---------------------------------

HUGE = "99999999999999999999999"

NUMERIC: list[tuple[list[str], str]] = [
    (["rank", "--region", "eu", "--top", "-5"], "--top"),
    (["rank", "--region", "eu", "--top", "0"], "--top"),
    (["rank", "--region", "eu", "--top", HUGE], "--top"),
    (["rank", "--region", "eu", "--top", "ten"], "--top"),
    (["rank", "--region", "eu", "--half-life", "-1"], "--half-life"),
    (["rank", "--region", "eu", "--half-life", "inf"], "--half-life"),
    (["rank", "--region", "eu", "--half-life", "nan"], "--half-life"),
    (["backtest", "--region", "eu", "--warmup", "0"], "--warmup"),
    (["backtest", "--region", "eu", "--warmup", HUGE], "--warmup"),
    (["backtest", "--region", "eu", "--budget", "-5GiB"], "--budget"),
    (["backtest", "--region", "eu", "--budget", "0"], "--budget"),
    (["backtest", "--region", "eu", "--budget", "lots"], "--budget"),
    (["generate", "--out", "g", "--weeks", "0"], "--weeks"),
    (["generate", "--out", "g", "--weeks", "105"], "--weeks"),
    (["generate", "--out", "g", "--seed", "-1"], "--seed"),
    (["generate", "--out", "g", "--pipelines", "1"], "--pipelines"),
    (["generate", "--out", "g", "--noise", "-1"], "--noise"),
    (["export", IMAGE, "--to", "x", "--top", "0"], "--top"),
    (["export", IMAGE, "--to", "x", "--concurrency", "0"], "--concurrency"),
    (["export", IMAGE, "--to", "x", "--concurrency", HUGE], "--concurrency"),
    (["import", ".", "--to", "http://127.0.0.1:9", "--concurrency", "-1"], "--concurrency"),
    (["inspect", "alpine", "--retries", "-1"], "--retries"),
    (["inspect", "alpine", "--retries", "11"], "--retries"),
    (["nodes", "prepull", "--node", "unix:///x", "--image", "a", "--per-node", "0"], "--per-node"),
    (["nodes", "prepull", "--node", "unix:///x", "--image", "a", "--timeout", "0"], "--timeout"),
    (["nodes", "prepull", "--node", "unix:///x", "--image", "a", "--timeout", "nan"], "--timeout"),
    (["nodes", "prepull", "--node", "unix:///x", "--image", "a", "--timeout", "inf"], "--timeout"),
    (["nodes", "prepull", "--node", "unix:///x", "--region", "eu", "--top", HUGE], "--top"),
    (["windows", "--window", "0 1 * * *|1h|UTC", "--next", "0"], "--next"),
    (["windows", "--window", "0 1 * * *|1h|UTC", "--next", "1001"], "--next"),
    (["windows", "--window", "0 1 * * *|1h|UTC", "--next", "x"], "--next"),
    (["sandbox", "up", "--dir", "sb", "--scale", "0"], "--scale"),
    (["sandbox", "up", "--dir", "sb", "--scale", "-1"], "--scale"),
    (["sandbox", "up", "--dir", "sb", "--scale", "nan"], "--scale"),
    (["sandbox", "up", "--dir", "sb", "--scale", "inf"], "--scale"),
    (["sandbox", "up", "--dir", "sb", "--latency", "-1"], "--latency"),
    (["sandbox", "up", "--dir", "sb", "--latency", "nan"], "--latency"),
    (["sandbox", "up", "--dir", "sb", "--ratelimit", "0"], "--ratelimit"),
    (["sandbox", "up", "--dir", "sb", "--ratelimit", "-5"], "--ratelimit"),
    (["sandbox", "up", "--dir", "sb", "--seed", "-1"], "--seed"),
    (["verify", "--sample", "0"], "--sample"),
    (["verify", "--sample", "nan"], "--sample"),
    (["verify", "--sample", "-1"], "--sample"),
]


@pytest.mark.parametrize(
    ("args", "option"), NUMERIC, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_numeric_option_out_of_range(
    args: list[str], option: str, cwd: Path, config_file: Path
) -> None:
    result = invoke(args, cwd, config_file)
    assert_clean_error(result, (2,), option)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        pytest.param(["plan", "--region", "eu", "--top", "-5"], "--top"),
        pytest.param(["run", "--region", "eu", "--top", "0"], "--top"),
        pytest.param(["status", "--limit", "-1"], "--limit"),
        pytest.param(
            ["run", "--region", "eu", "alpine:3", "--deadline", "2000-01-01T00:00:00Z"],
            "--deadline",
        ),
    ],
    ids=["plan --top -5", "run --top 0", "status --limit -1", "run --deadline in the past"],
)
def test_numeric_option_out_of_range_warm(
    args: list[str], option: str, cwd: Path, config_file: Path
) -> None:
    result = invoke(args, cwd, config_file)
    assert_clean_error(result, (2,), option)


def test_rank_unknown_region_names_it_and_the_known_ones(cwd: Path, config_file: Path) -> None:
    result = invoke(["rank", "--region", "mars"], cwd, config_file)
    line = assert_clean_error(result, (2,), "'mars'", "eu", "us")
    assert "known regions: eu, us" in line


# --- bad image references and URLs on the command line ------------------------------------

REFERENCES: list[tuple[list[str], str]] = [
    (["ref", "Not Valid!!"], "Not Valid!!"),
    (["ref", "library/UPPER:1"], "library/UPPER"),
    (["ref", "a:b:c:d"], "a:b:c:d"),
    (["ref", "x@sha256:zz"], "sha256:zz"),
    (["ref", ""], "''"),
    (["ref", "a" * 300], "a" * 20),
    (["inspect", "Not Valid!!"], "Not Valid!!"),
    (["inspect", "alpine@sha256:123"], "sha256:123"),
    (["inspect", "alpine", "--via", "ftp://127.0.0.1:9"], "--via"),
    (["inspect", "alpine", "--via", "http://bob:pw@127.0.0.1:9"], "--via"),
    (["inspect", "alpine", "--platform", "linux"], "--platform"),
    (["export", "Not Valid!!", "--from", "http://127.0.0.1:9", "--to", "out"], "Not Valid!!"),
    (["export", "../../etc:passwd", "--from", "http://127.0.0.1:9", "--to", "out"], "../../etc"),
    (["export", IMAGE, "--from", "http://127.0.0.1:9", "--to", "out", "--platform", "x"], "x"),
    (["export", IMAGE, "--from", "ftp://h", "--to", "out"], "--from"),
    (["nodes", "prepull", "--node", "unix:///x", "--image", "BAD REF"], "BAD REF"),
    (["plan", "--region", "eu", "Not Valid!!"], "Not Valid!!"),
    (["run", "--region", "eu", "--dry-run", "x@sha256:zz"], "sha256:zz"),
    (["import", ".", "--to", "not a url"], "not a url"),
]


@pytest.mark.parametrize(
    ("args", "named"), REFERENCES, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v[:30]
)
def test_bad_reference_on_the_command_line(
    args: list[str], named: str, cwd: Path, config_file: Path
) -> None:
    result = invoke(args, cwd, config_file)
    assert_clean_error(result, (2,), named)


# --- bad bundle files for `warmer import` ------------------------------------------------


@pytest.fixture(scope="module")
def good_bundle(
    registry_factory: Callable[..., Proc], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    src = registry_factory("hostile-src")
    run_sync(seed(src.url, build(seed=3, scale=0.01).only("someorg/app")))
    dest = tmp_path_factory.mktemp("hostile-bundle") / "good"
    result = CliRunner(env={"WARMER_CONFIG": ""}).invoke(
        cli, ["export", IMAGE, "--from", src.url, "--to", str(dest)]
    )
    assert result.exit_code == 0, result.output
    return dest


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    listed = [*json.loads((bundle / BUNDLE_FILE).read_text())["files"], BUNDLE_FILE]
    return [_file(rel, (bundle / rel).read_bytes()) for rel in listed]


def _edit_json(bundle: Path, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    doc = json.loads((bundle / BUNDLE_FILE).read_text())
    edit(doc)
    (bundle / BUNDLE_FILE).write_text(json.dumps(doc))


def _copy(good: Path, work: Path) -> Path:
    out = work / "bundle"
    shutil.copytree(good, out)
    return out


def _not_a_tar(good: Path, work: Path) -> tuple[Path, str]:
    path = work / "random.tar"
    path.write_bytes(bytes(range(256)) * 7)
    return path, "not an uncompressed tar"


def _empty(good: Path, work: Path) -> tuple[Path, str]:
    path = work / "empty.tar"
    path.write_bytes(b"")
    return path, "empty.tar"


def _truncated(good: Path, work: Path) -> tuple[Path, str]:
    full = _tar(work / "full.tar", _members(good)).read_bytes()
    path = work / "truncated.tar"
    path.write_bytes(full[: len(full) // 2 + 100])
    (work / "full.tar").unlink()
    return path, "truncated.tar"


def _gzipped(good: Path, work: Path) -> tuple[Path, str]:
    data = _tar(work / "plain.tar", _members(good)).read_bytes()
    (work / "plain.tar").unlink()
    path = work / "bundle.tar.gz"
    path.write_bytes(gzip.compress(data))
    return path, "not an uncompressed tar"


def _traversal(good: Path, work: Path) -> tuple[Path, str]:
    members = [*_members(good), _file("../escape-hostile", b"outside")]
    return _tar(work / "traversal.tar", members), "../escape-hostile"


def _traversal_listed(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d["files"].update({"../escape-hostile": "0" * 64}))
    members = [*_members(good)[:-1], _file(BUNDLE_FILE, (bundle / BUNDLE_FILE).read_bytes())]
    members.append(_file("../escape-hostile", b"outside"))
    shutil.rmtree(bundle)
    return _tar(work / "listed.tar", members), "../escape-hostile"


def _absolute(good: Path, work: Path) -> tuple[Path, str]:
    members = [*_members(good), _file("/tmp/escape-hostile-abs", b"outside")]
    return _tar(work / "absolute.tar", members), "/tmp/escape-hostile-abs"


def _symlink(good: Path, work: Path) -> tuple[Path, str]:
    link = tarfile.TarInfo("blobs/sha256/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _tar(work / "symlink.tar", [*_members(good), (link, None)]), "blobs/sha256/link"


def _hardlink(good: Path, work: Path) -> tuple[Path, str]:
    link = tarfile.TarInfo("hard")
    link.type, link.linkname = tarfile.LNKTYPE, "/etc/passwd"
    return _tar(work / "hardlink.tar", [*_members(good), (link, None)]), "'hard'"


def _device(good: Path, work: Path) -> tuple[Path, str]:
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    return _tar(work / "fifo.tar", [*_members(good), (fifo, None)]), "'fifo'"


def _missing_index(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    (bundle / "index.json").unlink()
    return bundle, "index.json: missing"


def _missing_bundle_json(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    (bundle / BUNDLE_FILE).unlink()
    return bundle, "no bundle.json"


def _not_json(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    (bundle / BUNDLE_FILE).write_text("{not json")
    return bundle, "not JSON"


def _wrong_format(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d.update(format="other/9"))
    return bundle, "format='other/9'"


def _manifest_not_its_digest(good: Path, work: Path) -> tuple[Path, str]:
    # the manifest's bytes changed and bundle.json's checksum updated to match them: only
    # the digest the file is named by (the manifest's digest) still tells
    bundle = _copy(good, work)
    doc = json.loads((bundle / BUNDLE_FILE).read_text())
    digest = doc["images"][0]["digest"]
    rel = blob_relpath(digest)
    data = (bundle / rel).read_bytes().replace(b"{", b"{ ", 1)
    (bundle / rel).write_bytes(data)
    doc["files"][rel] = hashlib.sha256(data).hexdigest()
    (bundle / BUNDLE_FILE).write_text(json.dumps(doc))
    return bundle, f"{rel}: content does not match its digest name"


def _tampered_blob(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    digest = json.loads((bundle / BUNDLE_FILE).read_text())["images"][0]["blobs"][-1]["digest"]
    path = bundle / blob_relpath(digest)
    path.write_bytes(b"x" + path.read_bytes()[1:])
    return bundle, f"{blob_relpath(digest)}: checksum mismatch"


def _bad_digest(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d["images"][0].update(digest="sha256:0000;touch /tmp/x;echo"))
    return bundle, "images.0.digest"


def _bad_repository(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d["images"][0].update(repository="../../v2/evil"))
    return bundle, "images.0.repository"


def _bad_tag(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d["images"][0].update(tag="v1\r\nX-Injected: 1"))
    return bundle, "images.0.tag"


def _negative_size(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d["images"][0]["blobs"][0].update(size=-1))
    return bundle, "images.0.blobs.0.size"


def _absolute_listed(good: Path, work: Path) -> tuple[Path, str]:
    bundle = _copy(good, work)
    _edit_json(bundle, lambda d: d["files"].update({"/etc/passwd": "0" * 64}))
    return bundle, "/etc/passwd"


def _symlink_in_dir(good: Path, work: Path) -> tuple[Path, str]:
    # a directory bundle whose listed blob is a symlink out of it: refused, never read
    bundle = _copy(good, work)
    digest = json.loads((bundle / BUNDLE_FILE).read_text())["images"][0]["blobs"][0]["digest"]
    path = bundle / blob_relpath(digest)
    path.unlink()
    path.symlink_to("/etc/passwd")
    return bundle, f"{blob_relpath(digest)}: missing"


BUNDLES: dict[str, Callable[[Path, Path], tuple[Path, str]]] = {
    "not a tar": _not_a_tar,
    "empty file": _empty,
    "truncated tar": _truncated,
    "gzipped tar": _gzipped,
    "member ../x": _traversal,
    "member ../x listed in bundle.json": _traversal_listed,
    "absolute member": _absolute,
    "symlink member": _symlink,
    "hardlink member": _hardlink,
    "fifo member": _device,
    "missing index.json": _missing_index,
    "missing bundle.json": _missing_bundle_json,
    "bundle.json not JSON": _not_json,
    "bundle.json of another format": _wrong_format,
    "manifest not matching its digest": _manifest_not_its_digest,
    "tampered layer": _tampered_blob,
    "malformed digest": _bad_digest,
    "repository with ..": _bad_repository,
    "tag with CRLF": _bad_tag,
    "negative size": _negative_size,
    "absolute path listed": _absolute_listed,
    "symlink out of a directory bundle": _symlink_in_dir,
}


async def _tags(url: str, repo: str) -> list[str]:
    """Tags of ``repo``; [] only for the registry's 404 NAME_UNKNOWN, else it raises."""
    async with RegistryClient(url, retries=0) as client:
        try:
            return await client.list_tags(repo)
        except NotFound as exc:
            if "NAME_UNKNOWN" in str(exc):
                return []
            raise


@pytest.mark.parametrize("case", list(BUNDLES))
def test_bad_bundle_is_refused_and_nothing_is_pushed(
    case: str, good_bundle: Path, plain_registry: Proc, tmp_path: Path, cwd: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path, named = BUNDLES[case](good_bundle, work)
    before = sorted(p.name for p in tmp_path.iterdir())
    prefix = "hostile-" + hashlib.sha256(case.encode()).hexdigest()[:8]
    result = invoke(["import", str(path), "--to", plain_registry.url, "--prefix", prefix], cwd)
    assert_clean_error(result, (1, 2), named)
    assert run_sync(_tags(plain_registry.url, f"{prefix}/someorg/app")) == []
    # nothing written next to the bundle or where a hostile member pointed
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "escape-hostile").exists()
    assert not (work.parent / "escape-hostile").exists()
    assert not Path("/tmp/escape-hostile-abs").exists()


def test_the_good_bundle_imports(good_bundle: Path, plain_registry: Proc, cwd: Path) -> None:
    # the table's bundles differ from this one only by what each case broke
    result = invoke(
        ["import", str(good_bundle), "--to", plain_registry.url, "--prefix", "hgood"], cwd
    )
    assert result.exit_code == 0, result.output
    assert run_sync(_tags(plain_registry.url, "hgood/someorg/app")) == ["v1.1"]
