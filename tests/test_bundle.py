"""Air-gap bundles against real registries: export from a seeded registry, import into a
fresh one, and prove with skopeo that the target serves the same digests."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from warmer.bundle.bundlefile import BUNDLE_FILE, loads
from warmer.bundle.importer import same_endpoint
from warmer.bundle.ocilayout import OciLayout, blob_relpath
from warmer.cli.main import cli
from warmer.oci.registry import NotFound, RegistryClient, Unreachable
from warmer.sandbox.catalogue import Catalogue, build
from warmer.sandbox.procs import Proc
from warmer.sandbox.seed import move_tag, run_sync, seed

BOTH = ["--platform", "linux/amd64", "--platform", "linux/arm64"]
IMAGES = ["library/python:3.12", "library/debian:12", "someorg/app:v1.1"]


def warmer_noconfig(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env={"WARMER_CONFIG": "", **(env or {})}).invoke(cli, list(args))


def skopeo(*args: str) -> bytes:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, timeout=120).stdout


def served_digest(registry: Proc, name: str) -> str:
    host = registry.url.removeprefix("http://")
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{name}")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return build(seed=3, scale=0.01)


@pytest.fixture(scope="module")
def src(registry_factory: Callable[..., Proc], catalogue: Catalogue) -> Proc:
    proc = registry_factory("bundle-src")
    run_sync(seed(proc.url, catalogue))
    return proc


@pytest.fixture(scope="module")
def base(src: Proc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("bundles") / "base"
    result = warmer_noconfig(
        "export", *IMAGES, "--from", src.url, "--to", str(dest), *BOTH, "--tar", "--json"
    )
    assert result.exit_code == 0, result.output
    return dest


def _json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_export_writes_an_oci_layout_that_skopeo_reads(base: Path, catalogue: Catalogue) -> None:
    bundle = loads((base / BUNDLE_FILE).read_bytes())
    assert [i.name for i in bundle.images] == [f"docker.io/{n}" for n in IMAGES]
    python = catalogue.tag("library/python", "3.12")
    assert bundle.images[0].digest == python.digest == bundle.images[0].source_digest
    assert bundle.images[0].platforms == ["linux/amd64", "linux/arm64/v8"]
    # every blob written once, every file listed with its sha256
    for rel, hexdigest in bundle.files.items():
        assert hashlib.sha256((base / rel).read_bytes()).hexdigest() == hexdigest
    blobs = {d for i in bundle.images for d in [b.digest for b in i.blobs]}
    assert blobs <= bundle.blob_files()
    raw = skopeo("inspect", "--raw", f"oci:{base}:docker.io/library/python:3.12")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == python.digest


def test_import_into_a_fresh_registry_serves_the_same_digests(
    base: Path, registry_factory: Callable[..., Proc], catalogue: Catalogue, tmp_path: Path
) -> None:
    dst = registry_factory("bundle-dst")
    report = _json(warmer_noconfig("import", str(base), "--to", dst.url, "--json"))
    assert report["blobs_pushed"] + report["blobs_mounted"] > 0
    assert len(report["tags_pushed"]) == len(IMAGES)
    for name in IMAGES:
        repo, tag = name.split(":")
        assert served_digest(dst, name) == catalogue.tag(repo, tag).digest
    # a pull of the amd64 image through skopeo gets every blob with its digest
    host = dst.url.removeprefix("http://")
    out = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/library/python:3.12", f"dir:{out}")
    amd64 = catalogue.tag("library/python", "3.12").image("linux/amd64")
    assert hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == amd64.digest[7:]
    for layer in amd64.layers:
        assert hashlib.sha256((out / layer.digest[7:]).read_bytes()).hexdigest() == layer.digest[7:]

    again = _json(warmer_noconfig("import", str(base), "--to", dst.url, "--json"))
    assert again["blobs_pushed"] == again["blobs_mounted"] == again["manifests_pushed"] == 0
    assert again["tags_pushed"] == []
    assert len(again["tags_skipped"]) == len(IMAGES)
    assert again["blobs_skipped"] == report["blobs_pushed"] + report["blobs_mounted"]


def test_import_from_tar_with_prefix(
    base: Path, registry_factory: Callable[..., Proc], catalogue: Catalogue
) -> None:
    dst = registry_factory("bundle-tar")
    tar = base.with_name(base.name + ".tar")
    assert tar.is_file()
    report = _json(
        warmer_noconfig("import", str(tar), "--to", dst.url, "--prefix", "airgap", "--json")
    )
    assert "airgap/library/debian:12" in report["tags_pushed"]
    assert (
        served_digest(dst, "airgap/library/debian:12")
        == catalogue.tag("library/debian", "12").digest
    )


def test_tampered_or_missing_files_are_refused_by_name(
    base: Path, plain_registry: Proc, tmp_path: Path
) -> None:
    bundle = loads((base / BUNDLE_FILE).read_bytes())
    layer = bundle.images[0].blobs[-1].digest
    bad = tmp_path / "tampered"
    shutil.copytree(base, bad)
    path = bad / blob_relpath(layer)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    result = warmer_noconfig("import", str(bad), "--to", plain_registry.url, "--prefix", "tampered")
    assert result.exit_code == 2
    assert f"{blob_relpath(layer)}: checksum mismatch" in result.output
    assert "Traceback" not in result.output

    (bad / "index.json").unlink()
    result = warmer_noconfig("import", str(bad), "--to", plain_registry.url, "--prefix", "tampered")
    assert result.exit_code == 2
    assert "index.json: missing" in result.output
    # nothing was pushed
    assert run_sync(_tags(plain_registry.url, "tampered/library/python")) == []


async def _tags(url: str, repo: str) -> list[str]:
    """The repository's tags; [] only for the registry's own 404 NAME_UNKNOWN. Anything else
    (the registry down, another error) raises, so "nothing was pushed" cannot pass by accident."""
    async with RegistryClient(url, retries=0) as client:
        try:
            return await client.list_tags(repo)
        except NotFound as exc:
            if "NAME_UNKNOWN" in str(exc):
                return []
            raise


def test_delta_brings_a_moved_tag_across(
    src: Proc,
    catalogue: Catalogue,
    registry_factory: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    images = ["library/python:3.11", "library/node:20"]
    first = tmp_path / "first"
    _json(
        warmer_noconfig("export", *images, "--from", src.url, "--to", str(first), *BOTH, "--json")
    )
    dst = registry_factory("bundle-delta")
    _json(warmer_noconfig("import", str(first), "--to", dst.url, "--json"))

    moved = run_sync(move_tag(src.url, catalogue, "library/python", "3.11"))
    delta = tmp_path / "delta"
    stats = _json(
        warmer_noconfig(
            "export",
            *images,
            "--from",
            src.url,
            "--to",
            str(delta),
            *BOTH,
            "--since",
            str(first / BUNDLE_FILE),
            "--json",
        )
    )
    assert stats["delta"] is True
    # only the new top layers and configs travel (one per platform): the rest is omitted
    assert stats["blobs_fetched"] == 4
    assert stats["blobs_omitted"] > stats["blobs_fetched"]
    delta_bundle = loads((delta / BUNDLE_FILE).read_bytes())
    assert delta_bundle.since is not None
    assert len(delta_bundle.omitted_blobs()) == stats["blobs_omitted"]

    # on its own, the delta names what it lacks
    fresh = registry_factory("bundle-delta-fresh")
    lonely = warmer_noconfig("import", str(delta), "--to", fresh.url)
    assert lonely.exit_code == 1
    assert delta_bundle.omitted_blobs()[0].digest in lonely.output
    assert "import its base bundle" in lonely.output

    report = _json(warmer_noconfig("import", str(delta), "--to", dst.url, "--json"))
    assert report["tags_pushed"] == ["library/python:3.11"]
    assert report["tags_skipped"] == ["library/node:20"]
    assert report["blobs_pushed"] == 4
    assert (
        served_digest(dst, "library/python:3.11")
        == moved.digest
        != catalogue.tag("library/python", "3.11").digest
    )


def test_export_resumes_and_refetches_only_what_is_missing_or_bad(
    src: Proc, tmp_path: Path
) -> None:
    dest = tmp_path / "resume"
    args = ["export", "library/golang:1.23", "--from", src.url, "--to", str(dest), "--json"]
    first = _json(warmer_noconfig(*args))
    assert first["blobs_fetched"] > 2 and first["blobs_reused"] == 0
    bundle = loads((dest / BUNDLE_FILE).read_bytes())
    gone, broken = bundle.images[0].blobs[0].digest, bundle.images[0].blobs[1].digest
    (dest / blob_relpath(gone)).unlink()
    (dest / blob_relpath(broken)).write_bytes(b"not the blob")
    partial = dest / "blobs/sha256/.deadbeef.partial"
    partial.write_bytes(b"half")
    second = _json(warmer_noconfig(*args))
    assert second["blobs_fetched"] == 2
    assert second["blobs_reused"] == first["blobs_fetched"] - 2
    assert not partial.exists()
    assert OciLayout(dest).verified_blob(broken)


def test_single_platform_export_filters_the_index(
    src: Proc, catalogue: Catalogue, registry_factory: Callable[..., Proc], tmp_path: Path
) -> None:
    dest = tmp_path / "amd64"
    _json(
        warmer_noconfig(
            "export", "library/redis:7.4", "--from", src.url, "--to", str(dest), "--json"
        )
    )
    image = loads((dest / BUNDLE_FILE).read_bytes()).images[0]
    tag = catalogue.tag("library/redis", "7.4")
    assert image.source_digest == tag.digest != image.digest
    assert image.platforms == ["linux/amd64"]
    dst = registry_factory("bundle-amd64")
    _json(warmer_noconfig("import", str(dest), "--to", dst.url, "--json"))
    host = dst.url.removeprefix("http://")
    index = json.loads(
        skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/library/redis:7.4")
    )
    assert [m["digest"] for m in index["manifests"]] == [tag.image("linux/amd64").digest]


def test_import_refuses_a_pull_through_mirror(
    base: Path, plain_registry: Proc, tmp_path: Path
) -> None:
    config = tmp_path / "warmer.toml"
    config.write_text(
        f"""
[upstreams.hub]
url = "https://registry-1.docker.io"
aliases = ["docker.io"]

[mirrors.central]
url = "{plain_registry.url}/"
parent = "hub"
"""
    )
    result = CliRunner().invoke(
        cli, ["--config", str(config), "import", str(base), "--to", plain_registry.url]
    )
    assert result.exit_code == 2
    assert "pull-through mirror 'central'" in result.output
    result = warmer_noconfig(
        "import",
        str(base),
        "--to",
        "http://127.0.0.1:1",
        "--pull-through-check",
        "http://127.0.0.1:1/",
    )
    assert result.exit_code == 2 and "pull-through" in result.output


async def test_streaming_upload_in_chunks(plain_registry: Proc, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10 KiB, pushed in 3 KiB PATCHes
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    async with RegistryClient(plain_registry.url) as client:
        with open(path, "rb") as f:
            await client.upload_blob("upload/chunked", digest, len(data), f, chunk_size=3072)
        assert await client.blob_size("upload/chunked", digest) == len(data)
        got = bytearray()
        await client.fetch_blob("upload/chunked", digest, sink=got.extend)
    assert bytes(got) == data


def test_bad_image_list_line_is_named(tmp_path: Path, src: Proc) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("library/python:3.12\n# comment\nNot Valid!!\n")
    result = warmer_noconfig(
        "export", "--images", str(listing), "--from", src.url, "--to", str(tmp_path / "x")
    )
    assert result.exit_code == 2
    assert f"{listing}:3:" in result.output


def test_export_region_takes_the_stored_ranking(
    src: Proc, tmp_path: Path, catalogue: Catalogue
) -> None:
    import pandas as pd

    from warmer.store.rankings import save_ranking

    db = f"sqlite:///{tmp_path / 'w.db'}"
    config = tmp_path / "warmer.toml"
    config.write_text(
        f"""
[database]
url = "{db}"
[upstreams.hub]
url = "{src.url}"
aliases = ["docker.io"]
[mirrors.central]
url = "http://127.0.0.1:9"
parent = "hub"
[regions.eu]
mirrors = ["central"]
"""
    )
    ranking = pd.DataFrame(
        {
            "region": ["eu", "eu", "eu"],
            "image": [
                "docker.io/library/debian",
                "docker.io/library/python",
                "docker.io/someorg/app",
            ],
            "tag": ["12", "3.12", "v1.1"],
            "digest": ["", "", ""],
            "score": [9.0, 5.0, 1.0],
            "window_score": [1.0, 1.0, 1.0],
            "rank": [1, 2, 3],
            "reasons": ["r", "r", "r"],
        }
    )
    save_ranking(db, ranking)
    dest = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli,
        ["--config", str(config), "export", "--region", "eu", "--top", "2", "--from", src.url,
         "--to", str(dest), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = loads((dest / BUNDLE_FILE).read_bytes())
    names = sorted(f"{i.repository}:{i.tag}" for i in bundle.images)
    assert names == ["library/debian:12", "library/python:3.12"]  # the top 2, not the third
    debian = catalogue.tag("library/debian", "12").image("linux/amd64")
    assert (dest / blob_relpath(debian.layers[0].digest)).is_file()


def test_tags_helper_fails_when_the_registry_is_down(plain_registry: Proc) -> None:
    # the "nothing was pushed" checks rely on _tags: only NAME_UNKNOWN means "no tags"
    assert run_sync(_tags(plain_registry.url, "never/pushed")) == []
    with pytest.raises(Unreachable):
        run_sync(_tags("http://127.0.0.1:1", "never/pushed"))


# --- the pull-through guard: addresses, not strings; and the target asked itself ----------

# Every spelling of one listener: a name, short and trailing-dot IPv4, IPv6 loopback, case.
ALIASES = [
    "http://localhost:{port}",
    "http://127.1:{port}",
    "http://[::1]:{port}",
    "http://127.0.0.1.:{port}",
    "HTTP://LOCALHOST:{port}/",
    "http://127.0.0.1:{port}/",
]
# The spellings that also connect (the registry listens on 127.0.0.1 only).
CONNECTING = ["http://localhost:{port}", "http://127.1:{port}", "HTTP://LOCALHOST:{port}/"]


@pytest.fixture(scope="module")
def proxy_mirror(registry_factory: Callable[..., Proc]) -> tuple[Proc, Proc]:
    """A real distribution in proxy mode (``proxy: remoteurl:``) and its writable parent."""
    parent = registry_factory("guard-parent")
    return registry_factory("guard-proxy", parent_url=parent.url), parent


def _port(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def _nothing_pushed(parent: Proc, proxy: Proc) -> None:
    for name in IMAGES:
        repo = name.split(":")[0]
        assert run_sync(_tags(parent.url, repo)) == []
        assert run_sync(_tags(proxy.url, repo)) == []  # the proxy asks the parent


def test_a_proxy_mode_registry_answers_a_push_with_405_unsupported(
    proxy_mirror: tuple[Proc, Proc],
) -> None:
    # Measured on CNCF distribution 2.8 (Debian docker-registry); importer.probe_push relies
    # on it. A proxy refuses the upload session; the same registry without proxy opens one.
    proxy, parent = proxy_mirror
    r = httpx.post(f"{proxy.url}/v2/guard/probe/blobs/uploads/")
    assert r.status_code == 405
    assert r.json() == {
        "errors": [{"code": "UNSUPPORTED", "message": "The operation is unsupported."}]
    }
    r = httpx.post(f"{parent.url}/v2/guard/probe/blobs/uploads/")
    assert r.status_code == 202 and r.headers["location"]
    assert httpx.delete(r.headers["location"]).status_code == 204


@pytest.mark.parametrize("alias", ALIASES)
def test_config_guard_compares_addresses_not_strings(
    alias: str, base: Path, proxy_mirror: tuple[Proc, Proc], tmp_path: Path
) -> None:
    proxy, parent = proxy_mirror
    config = tmp_path / "warmer.toml"
    config.write_text(
        f"""
[upstreams.hub]
url = "{parent.url}"
aliases = ["docker.io"]

[mirrors.central]
url = "{proxy.url}"
parent = "hub"
"""
    )
    target = alias.format(port=_port(proxy))
    result = CliRunner().invoke(cli, ["--config", str(config), "import", str(base), "--to", target])
    assert result.exit_code == 2, result.output
    assert "pull-through mirror 'central'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    _nothing_pushed(parent, proxy)


@pytest.mark.parametrize("alias", CONNECTING)
def test_without_config_the_target_itself_is_asked(
    alias: str, base: Path, proxy_mirror: tuple[Proc, Proc]
) -> None:
    proxy, parent = proxy_mirror
    target = alias.format(port=_port(proxy))
    result = warmer_noconfig("import", str(base), "--to", target)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output
    assert "HTTP 405 UNSUPPORTED" in line and "pull-through cache" in line
    _nothing_pushed(parent, proxy)


def test_the_probe_leaves_a_writable_target_as_it_was(
    base: Path, registry_factory: Callable[..., Proc]
) -> None:
    dst = registry_factory("bundle-probe")
    report = _json(warmer_noconfig("import", str(base), "--to", dst.url, "--json"))
    assert len(report["tags_pushed"]) == len(IMAGES)
    # the probe's upload session was cancelled (distribution 2.8 answers the DELETE 204 and
    # removes the session's data file, keeping an empty hashstates directory)
    data = Path(dst.log).parent / "data"
    assert list(data.rglob("_uploads/*/hashstates"))  # the probe did open a session
    assert not list(data.rglob("_uploads/*/data"))
    log = Path(dst.log).read_text()
    assert '"POST /v2/library/python/blobs/uploads/ HTTP/1.1" 202' in log
    assert log.count('"DELETE /v2/library/python/blobs/uploads/') >= 1


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://127.0.0.1", "http://localhost:80", True),
        ("https://127.0.0.1", "http://localhost:443", True),
        ("https://127.0.0.1/", "http://localhost", False),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001", False),
        ("http://127.0.0.1:5000", "http://[::ffff:127.0.0.1]:5000", True),
        ("http://0x7f.1:5000", "http://2130706433:5000", True),
        ("http://mirror.invalid:5000", "http://MIRROR.invalid.:5000/", True),
        ("http://mirror.invalid:5000", "http://other.invalid:5000", False),
    ],
)
def test_same_endpoint(a: str, b: str, same: bool) -> None:
    assert same_endpoint(a, b) is same
