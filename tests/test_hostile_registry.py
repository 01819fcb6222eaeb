"""Commands against a hostile registry (a real loopback server answering what a test chooses,
see ``tests/hostile_registry.py``): every value from the network is checked before it is
used, stored, logged or put in a command; a bad one is a clean error naming the registry
(exit 1, one line, no traceback), nothing of it reaches the ledger, a hook or a log, and no
secret leaks at ``-vv``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hostile_registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    STORED,
    Answer,
    HostileRegistry,
    Image,
    Seen,
    error,
    sha256,
)

from warmer.cli.main import cli
from warmer.oci.registry import InvalidResponse, RateLimited, RegistryClient

ROOT = Path(__file__).resolve().parent.parent
REPO, TAG = "t/app", "1.0"
GOOD = "sha256:" + "a" * 64
INJECTION = "sha256:0000;touch {marker};echo"


@pytest.fixture
def reg() -> Iterator[HostileRegistry]:
    with HostileRegistry() as server:
        yield server


@pytest.fixture
def storage() -> Iterator[HostileRegistry]:
    """A second server: another host (origin) for redirects."""
    with HostileRegistry() as server:
        yield server


@pytest.fixture(autouse=True)
def no_host_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


def write_config(
    tmp_path: Path, upstream: str, mirror: str, extra_upstream: str = "", extra_mirror: str = ""
) -> Path:
    path = tmp_path / "warmer.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "warmer.db"}"\n'
        f'[upstreams.hostile]\nurl = "{upstream}"\nratelimit_reserve = 0\n{extra_upstream}\n'
        '[run]\nretries = 0\ntimeout = "5s"\n'
        f'[mirrors.central]\nurl = "{mirror}"\nparent = "hostile"\n{extra_mirror}\n'
        '[regions.r]\nmirrors = ["central"]\n'
    )
    return path


def warmer(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_clean_failure(result: Result, *named: str, code: int = 1, one_line: bool = True) -> str:
    """Exit ``code``, no traceback, no exception escaping click; the error line(s) on stderr
    name each of ``named``. Returns stderr."""
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, result.stdout, err, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = err.strip().splitlines()
    if one_line:
        assert len(lines) == 1, lines
    for name in named:
        assert name in err, (name, err)
    return err


#: The ledger's data: what mirrors hold, what tags resolved to, run items, incidents, drift.
DATA_TABLES = ("resolution", "holding", "run_item", "incident", "drift")


def db_text(tmp_path: Path, tables: tuple[str, ...] | None = None) -> str:
    """Every value in ``tables`` (default: every table) of the SQLite ledger, as text."""
    db = tmp_path / "warmer.db"
    if not db.exists():
        return ""
    con = sqlite3.connect(db)
    try:
        if tables is None:
            tables = tuple(
                r[0] for r in con.execute("select name from sqlite_master where type='table'")
            )
        return "\n".join(
            repr(row) for table in tables for row in con.execute(f'select * from "{table}"')
        )
    finally:
        con.close()


# --- the hostile answers -------------------------------------------------------------------

Spoil = Callable[[HostileRegistry, Image], None]


def header_digest(value: str | bytes) -> Spoil:
    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.manifest(REPO, TAG, img.manifest, digest=value)

    return spoil


def content_type(value: str | bytes) -> Spoil:
    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.manifest(REPO, TAG, img.manifest, media_type=value)

    return spoil


def body(make: Callable[[Image], bytes], media_type: str = OCI_MANIFEST) -> Spoil:
    """The manifest by tag replaced, with a Docker-Content-Digest that matches it: the
    content itself is what is wrong."""

    def spoil(reg: HostileRegistry, img: Image) -> None:
        data = make(img)
        reg.manifest(REPO, TAG, data, media_type=media_type)
        reg.manifest(REPO, sha256(data), data, media_type=media_type)

    return spoil


def layer(**fields: Any) -> Spoil:
    def make(img: Image) -> bytes:
        data = img.manifest_json()
        data["layers"][0].update(fields)
        return json.dumps(data).encode()

    return body(make)


def shaped(**fields: Any) -> Spoil:
    return body(lambda img: json.dumps(img.manifest_json(**fields)).encode())


def index_entry(**fields: Any) -> Spoil:
    def make(img: Image) -> bytes:
        entry = {"mediaType": OCI_MANIFEST, "digest": img.digest, "size": len(img.manifest)}
        entry["platform"] = {"os": "linux", "architecture": "amd64"}
        entry.update(fields)
        return json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        ).encode()

    return body(make, OCI_INDEX)


def redirect(location: str | bytes) -> Spoil:
    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.both(f"/v2/{REPO}/manifests/{TAG}", Answer(307, [("Location", location)]))

    return spoil


def bearer(challenge: str, token_answer: Answer | None = None) -> Spoil:
    """A registry that asks for a Bearer token at its own /token, which answers odd."""

    def spoil(reg: HostileRegistry, img: Image) -> None:
        value = challenge.replace("{url}", reg.url)
        reg.both(
            f"/v2/{REPO}/manifests/{TAG}",
            lambda seen: (
                Answer(401, [("WWW-Authenticate", value)], b"{}")
                if "authorization" not in seen.headers
                else Answer(200, [("Content-Type", OCI_MANIFEST)], img.manifest)
            ),
        )
        if token_answer is not None:
            reg.set("GET", "/token", token_answer)

    return spoil


def token_json(data: Any) -> Answer:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return Answer(200, [("Content-Type", "application/json")], raw)


REALM = 'Bearer realm="{url}/token",service="hostile"'
HEX = "a" * 64

# (id, spoil, what the error line names besides the registry's URL)
CASES: list[tuple[str, Spoil, str]] = [
    # Docker-Content-Digest
    ("digest-short", header_digest("sha256:abc"), "Docker-Content-Digest"),
    ("digest-long", header_digest("sha256:" + "a" * 65), "Docker-Content-Digest"),
    ("digest-upper", header_digest("sha256:" + "A" * 64), "Docker-Content-Digest"),
    ("digest-md5", header_digest("md5:" + "a" * 32), "Docker-Content-Digest"),
    ("digest-unknown-alg", header_digest("blake3:" + HEX), "Docker-Content-Digest"),
    ("digest-sha512-short", header_digest("sha512:" + HEX), "Docker-Content-Digest"),
    ("digest-no-alg", header_digest(":" + HEX), "Docker-Content-Digest"),
    ("digest-no-colon", header_digest(HEX), "Docker-Content-Digest"),
    ("digest-shell-semicolon", header_digest("sha256:0000;touch /tmp/x;echo"), "touch"),
    ("digest-shell-subst", header_digest("sha256:$(id)" + "a" * 59), "Docker-Content-Digest"),
    ("digest-backticks", header_digest("sha256:`id`" + "a" * 59), "Docker-Content-Digest"),
    ("digest-trailing", header_digest(GOOD + "x"), "Docker-Content-Digest"),
    ("digest-space", header_digest(GOOD + " ; rm -rf /"), "Docker-Content-Digest"),
    ("digest-latin1", header_digest(b"sha256:\xe9" + b"a" * 63), "Docker-Content-Digest"),
    ("digest-ansi-escape", header_digest(b"sha256:\x1b[31m" + b"a" * 60), r"\x1b"),
    (
        "digest-obs-fold-newline",
        header_digest(GOOD.encode() + b"\r\n continued"),
        "Docker-Content-Digest",
    ),
    (
        "digest-injected-second-header",
        header_digest(GOOD.encode() + b"\r\nDocker-Content-Digest: " + sha256(b"o").encode()),
        "Docker-Content-Digest",
    ),
    (
        "digest-bare-lf-injects-content-type",
        header_digest(GOOD.encode() + b"\nContent-Type: text/html<x>"),
        "Content-Type",
    ),
    # Content-Type
    ("ctype-no-subtype", content_type("application"), "Content-Type"),
    ("ctype-markup", content_type("text/html<script>"), "Content-Type"),
    ("ctype-space", content_type("application/vnd.oci image"), "Content-Type"),
    ("ctype-latin1", content_type(b"application/\xe9"), "Content-Type"),
    # manifest bodies
    ("body-not-json", body(lambda i: b"<html>not json</html>"), "not JSON"),
    ("body-empty", body(lambda i: b""), "not JSON"),
    ("body-array", body(lambda i: b"[1, 2]"), "not a JSON object"),
    ("body-string", body(lambda i: b'"manifest"'), "not a JSON object"),
    ("body-deep-nesting", body(lambda i: b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    (
        "body-huge-number",
        body(lambda i: b'{"schemaVersion": 2, "n": 1' + b"0" * 5000 + b"}"),
        "not JSON",
    ),
    ("body-not-utf8", body(lambda i: b'{"schemaVersion": 2, "x": "\xff"}'), "not JSON"),
    (
        "body-too-large",
        body(lambda i: i.manifest[:-1] + b', "pad": "' + b"x" * (5 << 20) + b'"}'),
        "larger than",
    ),
    ("layer-digest-upper", layer(digest="sha256:" + "A" * 64), "digest"),
    ("layer-digest-shell", layer(digest="sha256:0;touch /tmp/y"), "digest"),
    ("layer-digest-newline", layer(digest=GOOD + "\n"), "digest"),
    ("layer-digest-number", layer(digest=12345), "digest"),
    ("layer-size-negative", layer(size=-1), "negative"),
    ("layer-size-huge", layer(size=2**41), "more than"),
    ("layer-size-float", layer(size=1.5), "not an integer"),
    ("layer-size-string", layer(size="100"), "not an integer"),
    ("layer-size-bool", layer(size=True), "not an integer"),
    ("layer-size-null", layer(size=None), "not an integer"),
    ("layer-mediatype-bare", layer(mediaType="x"), "mediaType"),
    ("layer-mediatype-params", layer(mediaType="application/x;p=1"), "parameters"),
    ("layer-mediatype-number", layer(mediaType=7), "mediaType"),
    ("layers-dict", shaped(layers={"a": 1}), "not a list"),
    ("layers-int", shaped(layers=5), "not a list"),
    ("config-string", shaped(config="sha256:abc"), "not an object"),
    ("mediatype-not-string", shaped(mediaType=["x"]), "not a string"),
    ("mediatype-unsupported", shaped(mediaType="text/plain"), "unsupported media type"),
    ("index-entry-bad-digest", index_entry(digest="sha256:xyz"), "digest"),
    (
        "index-entry-platform-newline",
        index_entry(platform={"os": "linux\nx", "architecture": "amd64"}),
        "platform",
    ),
    (
        "index-manifests-int",
        body(
            lambda i: (
                b'{"schemaVersion": 2, "mediaType": "%s", "manifests": 3}' % OCI_INDEX.encode()
            ),
            OCI_INDEX,
        ),
        "not a list",
    ),
    # redirects
    ("redirect-file", redirect("file:///etc/passwd"), "Location"),
    ("redirect-ftp", redirect("ftp://127.0.0.1/x"), "Location"),
    ("redirect-javascript", redirect("javascript:alert(1)"), "Location"),
    ("redirect-bad-port", redirect("http://127.0.0.1:99999999/x"), "Location"),
    ("redirect-userinfo", redirect("http://bob:pw-Q9@127.0.0.1:9/x"), "user info"),
    ("redirect-bad-url", redirect("http://[::1/x"), "Location"),
    (
        "redirect-loop",
        redirect(f"/v2/{REPO}/manifests/{TAG}?X-Amz-Signature=LOOPSIG"),
        "too many redirects",
    ),
    # auth challenges and token answers
    ("realm-file", bearer('Bearer realm="file:///etc/passwd",service="x"'), "realm"),
    ("realm-ftp", bearer('Bearer realm="ftp://127.0.0.1/token"'), "realm"),
    ("realm-space", bearer('Bearer realm="http://a b/token"'), "realm"),
    ("realm-missing", bearer('Bearer service="x"'), "no realm"),
    ("service-control-char", bearer('Bearer realm="{url}/token",service="a\x07b"'), "service"),
    ("scope-too-long", bearer(f'Bearer realm="{{url}}/token",scope="{"s" * 5000}"'), "scope"),
    ("token-not-json", bearer(REALM, token_json(b"<html>")), "other than JSON"),
    ("token-deep-json", bearer(REALM, token_json(b"[" * 100_000)), "other than JSON"),
    ("token-list", bearer(REALM, token_json([1, 2])), "no token"),
    ("token-number", bearer(REALM, token_json({"token": 5})), "no token"),
    ("token-empty", bearer(REALM, token_json({"token": ""})), "no token"),
    ("token-crlf", bearer(REALM, token_json({"token": "abc\r\nX-Evil: 1"})), "invalid token"),
    ("token-non-ascii", bearer(REALM, token_json({"token": "t\u00f6k\u00e9n"})), "invalid token"),
    ("token-huge", bearer(REALM, token_json({"token": "t" * 70_000})), "invalid token"),
    (
        "token-refused",
        bearer(REALM, error(403, "DENIED", "no\x1b[2J way\r\nINFO fake log")),
        "refused",
    ),
]


@pytest.mark.parametrize(("spoil", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_inspect_a_hostile_registry_is_one_clean_line(
    reg: HostileRegistry, spoil: Spoil, named: str
) -> None:
    img = reg.image()
    spoil(reg, img)
    result = warmer("inspect", f"{reg.host}/{REPO}:{TAG}", "--via", reg.url, "--retries", "0")
    err = assert_clean_failure(result, reg.url, named)
    for hidden in ("\x1b", "X-Amz-Signature", "LOOPSIG", "pw-Q9"):
        assert hidden not in err


def test_the_cases_are_many_and_distinct() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) + len(RUN_CASES) + len(CLIENT_CASES) >= 45


# --- warmer run and plan: bad content never reaches the ledger ------------------------------

RUN_CASES = [c for c in CASES if c[0].startswith(("digest-", "layer-", "index-entry", "ctype-"))]


@pytest.mark.parametrize(
    ("spoil", "named"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES]
)
def test_run_and_plan_leave_out_the_image_and_record_nothing_of_it(
    reg: HostileRegistry, tmp_path: Path, spoil: Spoil, named: str
) -> None:
    img = reg.image()
    spoil(reg, img)
    config = write_config(tmp_path, reg.url, reg.url)
    ref = f"{reg.host}/{REPO}:{TAG}"
    plan = warmer("--config", str(config), "plan", "-r", "r", ref, "--json")
    assert plan.exit_code == 0 and "Traceback" not in plan.output, plan.output
    (skipped,) = json.loads(plan.stdout)["skipped"]
    assert reg.url in skipped["reason"] and named in skipped["reason"]

    run = warmer("--config", str(config), "run", "-r", "r", ref)
    assert_clean_failure(run, "could not be resolved")
    assert reg.url in run.stdout  # the left-out image's reason names the registry
    stored = db_text(tmp_path, DATA_TABLES)
    assert img.digest not in stored  # no resolution, holding or item for the image
    for word in ("touch", "$(id)", "`id`", "\\x1b", "text/html", "\x1b"):
        assert word not in stored
    # The run's record names why the image was left out, the value escaped on one line.
    assert "\x1b" not in db_text(tmp_path) and "\ncontinued" not in db_text(tmp_path)


# --- the client on its own: headers, tag lists, uploads, rate limits -----------------------


async def _head(c: RegistryClient) -> Any:
    return await c.head_manifest(REPO, TAG)


async def _blob_size(c: RegistryClient) -> Any:
    return await c.blob_size(REPO, GOOD)


async def _tags(c: RegistryClient) -> Any:
    return await c.list_tags(REPO)


async def _upload(c: RegistryClient) -> Any:
    return await c.push_blob(REPO, b"data")


def tags_answer(data: Any, *headers: tuple[str, str]) -> Spoil:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()

    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.set("GET", f"/v2/{REPO}/tags/list", Answer(200, list(headers), raw))

    return spoil


def head_headers(*headers: tuple[str, str]) -> Spoil:
    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.set("HEAD", f"/v2/{REPO}/manifests/{TAG}", Answer(200, list(headers), length=False))

    return spoil


def upload_location(location: str) -> Spoil:
    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.set("POST", f"/v2/{REPO}/blobs/uploads/", Answer(202, [("Location", location)]))

    return spoil


def blob_head(*headers: tuple[str, str]) -> Spoil:
    def spoil(reg: HostileRegistry, img: Image) -> None:
        reg.set("HEAD", f"/v2/{REPO}/blobs/{GOOD}", Answer(200, list(headers), length=False))

    return spoil


D = ("Docker-Content-Digest", GOOD)
CLIENT_CASES: list[tuple[str, Spoil, Callable[[RegistryClient], Any], str]] = [
    (
        "head-length-huge",
        head_headers(D, ("Content-Length", "99999999999999")),
        _head,
        "Content-Length",
    ),
    ("head-ctype-bad", head_headers(D, ("Content-Type", "a/b/c")), _head, "Content-Type"),
    (
        "head-digest-bad",
        head_headers(("Docker-Content-Digest", "sha256:1;id")),
        _head,
        "Docker-Content-Digest",
    ),
    (
        "blob-length-huge",
        blob_head(("Content-Length", "1" + "0" * 15)),
        _blob_size,
        "Content-Length",
    ),
    ("tags-newline", tags_answer({"name": REPO, "tags": ["v1", "v2\nINFO forged"]}), _tags, "tag"),
    ("tags-path", tags_answer({"name": REPO, "tags": ["../../etc"]}), _tags, "tag"),
    ("tags-dash", tags_answer({"name": REPO, "tags": ["-rf"]}), _tags, "tag"),
    ("tags-too-long", tags_answer({"name": REPO, "tags": ["a" * 129]}), _tags, "tag"),
    ("tags-number", tags_answer({"name": REPO, "tags": [5]}), _tags, "tag"),
    ("tags-shell", tags_answer({"name": REPO, "tags": ["v1;reboot"]}), _tags, "tag"),
    ("tags-dict", tags_answer({"name": REPO, "tags": {"v1": 1}}), _tags, "tag list"),
    (
        "tags-name-upper",
        tags_answer({"name": "Evil/Name", "tags": ["v1"]}),
        _tags,
        "repository name",
    ),
    ("tags-not-json", tags_answer(b"\x00\x01"), _tags, "JSON"),
    ("tags-deep", tags_answer(b'{"tags":' + b"[" * 100_000), _tags, "JSON"),
    (
        "tags-next-other-host",
        tags_answer(
            {"tags": ["v1"]},
            ("Link", '<http://127.0.0.2:1/v2/t/app/tags/list?n=1&X-Amz-Signature=S>; rel="next"'),
        ),
        _tags,
        "another host",
    ),
    (
        "tags-next-file",
        tags_answer({"tags": ["v1"]}, ("Link", '<file:///etc/passwd>; rel="next"')),
        _tags,
        "Location",
    ),
    ("upload-location-ftp", upload_location("ftp://127.0.0.1/upload"), _upload, "Location"),
    ("upload-location-js", upload_location("javascript:alert(1)"), _upload, "Location"),
]


@pytest.mark.parametrize(
    ("spoil", "call", "named"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES]
)
def test_client_refuses_hostile_values_naming_the_registry(
    reg: HostileRegistry, spoil: Spoil, call: Callable[[RegistryClient], Any], named: str
) -> None:
    spoil(reg, reg.image())
    reg.set("HEAD", f"/v2/{REPO}/blobs/{sha256(b'data')}", error(404, "BLOB_UNKNOWN"))

    async def go() -> None:
        async with RegistryClient(reg.url, retries=0, backoff=0.01) as c:
            await call(c)

    with pytest.raises(InvalidResponse) as info:
        asyncio.run(go())
    message = str(info.value)
    assert reg.url in message and named in message and "\n" not in message
    assert "X-Amz-Signature" not in message


def test_valid_answers_still_pass(reg: HostileRegistry) -> None:
    """The checks refuse only what is wrong: a real-world answer goes through."""
    img = reg.image()
    reg.set(
        "GET",
        f"/v2/{REPO}/tags/list",
        Answer(
            200, [], json.dumps({"name": REPO, "tags": ["1.0", "latest", "v1.2.3-rc_1"]}).encode()
        ),
    )
    reg.manifest(REPO, TAG, img.manifest, media_type=OCI_MANIFEST + "; charset=utf-8")

    async def go() -> tuple[Any, Any, Any]:
        async with RegistryClient(reg.url, retries=0) as c:
            return (
                await c.head_manifest(REPO, TAG),
                await c.list_tags(REPO),
                await c.resolve(REPO, TAG),
            )

    head, tags, tree = asyncio.run(go())
    assert (head.digest, head.media_type, head.size) == (
        img.digest,
        OCI_MANIFEST,
        len(img.manifest),
    )
    assert tags == ["1.0", "latest", "v1.2.3-rc_1"] and tree.digest == img.digest


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("inf", None),
        ("nan", None),
        ("1e400", None),
        ("-5", None),
        ("30", 30.0),
        ("999999999", 86400.0),
    ],
)
def test_rate_limit_headers_are_bounded(
    reg: HostileRegistry, retry_after: str, expected: float | None
) -> None:
    reg.both(
        f"/v2/{REPO}/manifests/{TAG}",
        Answer(
            429,
            [
                ("Retry-After", retry_after),
                ("RateLimit-Limit", "1" + "0" * 5000),  # int() of it would raise
                ("RateLimit-Remaining", "0;w=21600"),
                ("Docker-RateLimit-Source", "1.2.3.4\x1b[2J"),
            ],
            json.dumps({"errors": {"not": "a list"}}).encode(),  # a dict, not a list
        ),
    )

    async def go() -> RegistryClient:
        async with RegistryClient(reg.url, retries=0) as c:
            with pytest.raises(RateLimited) as info:
                await c.get_manifest(REPO, TAG)
            assert info.value.retry_after == expected
            assert "\x1b" not in str(info.value)
            return c

    client = asyncio.run(go())
    assert client.last_ratelimit is not None
    assert client.last_ratelimit.limit is None and client.last_ratelimit.remaining == 0
    assert client.last_ratelimit.source is None


def test_error_text_from_the_registry_is_one_printable_line(reg: HostileRegistry) -> None:
    reg.image()
    reg.both(
        f"/v2/{REPO}/manifests/{TAG}",
        error(400, "BAD", "line one\r\nERROR forged line \x1b[31mred\x07" + "x" * 1000),
    )
    result = warmer("inspect", f"{reg.host}/{REPO}:{TAG}", "--via", reg.url, "--retries", "0")
    err = assert_clean_failure(result, reg.url, "forged line")
    assert "\x1b" not in err and "\x07" not in err and len(err) < 400


# --- the invalidation hook: the repro of issue 17 ------------------------------------------


def test_hook_refuses_the_injected_digest_and_runs_for_valid_values(tmp_path: Path) -> None:
    from warmer.config import InvalidateHook
    from warmer.upkeep.invalidate import run_hook

    marker = tmp_path / "x"
    hook = InvalidateHook(command=["/bin/sh", "-c", "echo purge {tag} {digest}"])
    bad = INJECTION.format(marker=marker)
    result = asyncio.run(
        run_hook(hook, image="docker.io/library/a", repository="library/a", tag="1", digest=bad)
    )
    assert not result.ok and not marker.exists()
    assert "hook not run" in result.detail and "{digest}" in result.detail
    assert "Docker-Content-Digest" in result.detail

    for name, values in [
        ("tag", {"tag": "1;touch " + str(marker)}),
        ("repository", {"repository": "a/$(touch " + str(marker) + ")"}),
        ("image", {"image": "a b"}),
    ]:
        args = {
            "image": "docker.io/library/a",
            "repository": "library/a",
            "tag": "1",
            "digest": GOOD,
        }
        args.update(values)
        hook = InvalidateHook(command=["/bin/sh", "-c", f"echo {{{name}}}"])
        result = asyncio.run(run_hook(hook, **args))
        assert not result.ok and f"{{{name}}}" in result.detail and not marker.exists()

    out = tmp_path / "ran"
    ok = InvalidateHook(
        command=["/bin/sh", "-c", f'echo "$1 $2 $3" > {out}', "sh", "{image}", "{tag}", "{digest}"]
    )
    done = asyncio.run(
        run_hook(ok, image="docker.io/library/a", repository="library/a", tag="1", digest=GOOD)
    )
    assert done.ok and out.read_text().split() == ["docker.io/library/a", "1", GOOD]


def test_url_hook_values_are_percent_encoded(reg: HostileRegistry) -> None:
    from warmer.config import InvalidateHook
    from warmer.upkeep.invalidate import run_hook

    reg.set("POST", "/purge", Answer(200))
    hook = InvalidateHook(url=f"{reg.url}/purge?image={{image}}&digest={{digest}}")
    result = asyncio.run(
        run_hook(hook, image="[::1]:5000/app/x", repository="app/x", tag="1", digest=GOOD)
    )
    assert result.ok, result.detail
    (seen,) = reg.seen("POST", "/purge")
    assert seen.path == f"/purge?image=%5B::1%5D:5000/app/x&digest={GOOD}"


def test_refresh_never_runs_a_hook_with_a_hostile_upstream_digest(
    reg: HostileRegistry, storage: HostileRegistry, tmp_path: Path
) -> None:
    """The path the digest takes in real code: ``warmer refresh`` HEADs the upstream, and a
    mirror serving another digest is stale, so its hook is called with the upstream's
    digest. The upstream (``reg``) turns hostile after a warm run through the mirror
    (``storage``, a second fake registry serving the same image)."""
    img = reg.image()
    storage.image()
    marker = tmp_path / "x"
    hook = 'invalidate = { command = ["/bin/sh", "-c", "echo purge {tag} {digest}"] }'
    config = write_config(tmp_path, reg.url, storage.url, extra_mirror=hook)
    ref = f"{reg.host}/{REPO}:{TAG}"
    run = warmer("--config", str(config), "run", "-r", "r", ref)
    assert run.exit_code == 0, run.output

    reg.manifest(REPO, TAG, img.manifest, digest=INJECTION.format(marker=marker))
    result = warmer("--config", str(config), "refresh", "-r", "r", "--json")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert not marker.exists()
    report = json.loads(result.stdout)
    assert report["invalidations"] == [] and report["moved"] == 0
    (problem,) = report["errors"]
    assert reg.url in problem and "Docker-Content-Digest" in problem
    assert "touch" not in db_text(tmp_path, DATA_TABLES)


def test_verify_reports_a_hostile_upstream_tag_cleanly(
    reg: HostileRegistry, storage: HostileRegistry, tmp_path: Path
) -> None:
    img = reg.image()
    storage.image()
    config = write_config(tmp_path, reg.url, storage.url)
    ref = f"{reg.host}/{REPO}:{TAG}"
    assert warmer("--config", str(config), "run", "-r", "r", ref).exit_code == 0
    reg.manifest(REPO, TAG, img.manifest, digest="sha256:0;reboot")
    result = warmer("--config", str(config), "verify", "-r", "r")
    err = assert_clean_failure(result, reg.url, "Docker-Content-Digest", one_line=False)
    assert all(line.startswith("error: ") for line in err.strip().splitlines())
    assert "reboot" not in db_text(tmp_path, DATA_TABLES)


# --- the leak check -------------------------------------------------------------------------

USER, PASSWORD = "bob", "pw-Hunter2-LEAKCHECK"
TOKEN = "tok-LEAKCHECK-eyJhbGciOi.abc.def"
SIGNATURE, CREDENTIAL, STS = "SIG-LEAKCHECK-0f0f", "CRED-LEAKCHECK-AKIA", "STS-LEAKCHECK-FwoG"


def secured(reg: HostileRegistry, storage: HostileRegistry, img: Image) -> None:
    """``reg`` wants Bearer tokens from its /token (given for Basic bob:PASSWORD) and sends
    blob GETs to ``storage`` with a pre-signed URL; cookies and challenges carry secrets."""
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    challenge = f'Bearer realm="{reg.url}/token",service="hostile",error="invalid_token"'

    def token(seen: Seen) -> Answer:
        if seen.headers.get("authorization") != basic:
            return error(401, "UNAUTHORIZED")
        data = {"token": TOKEN, "access_token": TOKEN, "expires_in": 300}
        return Answer(
            200,
            [("Content-Type", "application/json"), ("Set-Cookie", f"session={TOKEN}; HttpOnly")],
            json.dumps(data).encode(),
        )

    def guarded(inner: Answer | Callable[[Seen], Answer]) -> Callable[[Seen], Answer]:
        def answer(seen: Seen) -> Answer:
            if seen.headers.get("authorization") != f"Bearer {TOKEN}":
                return Answer(401, [("WWW-Authenticate", challenge)], b"{}")
            return inner if isinstance(inner, Answer) else inner(seen)

        return answer

    for (method, path), route in list(reg.routes.items()):
        if "/blobs/" in path:
            query = f"X-Amz-Credential={CREDENTIAL}&X-Amz-Security-Token={STS}&X-Amz-Signature={SIGNATURE}"
            digest = path.rsplit("/", 1)[1]
            route = Answer(307, [("Location", f"{storage.url}/store/{digest}?{query}")])
            data = img.layer if digest == sha256(img.layer) else img.config
            storage.both(f"/store/{digest}", Answer(200, STORED, data))
        reg.set(method, path, guarded(route))
    reg.set("GET", "/token", token)


def test_no_secret_leaks_at_vv_json_or_into_the_database(
    reg: HostileRegistry, storage: HostileRegistry, tmp_path: Path
) -> None:
    img = reg.image()
    secured(reg, storage, img)
    creds = f'credentials = {{ username = "{USER}", password_env = "LEAK_PW" }}'
    config = write_config(tmp_path, reg.url, reg.url, extra_upstream=creds, extra_mirror=creds)
    ref = f"{reg.host}/{REPO}:{TAG}"
    env = {**os.environ, "LEAK_PW": PASSWORD, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    warmer_bin = [sys.executable, "-m", "warmer.cli.main", "--config", str(config)]
    outputs = []
    for args in (
        ["-vv", "run", "-r", "r", ref, "--json"],
        ["-vv", "--log-format", "json", "inspect", ref, "--via", reg.url, "--json"],
        ["-vv", "verify", "-r", "r", "--json"],
    ):
        done = subprocess.run(
            [*warmer_bin, *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
        )
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-6000:])
        assert "Traceback" not in done.stderr
        outputs += [done.stdout, done.stderr]
    log = "\n".join(outputs)
    # The log did see what would leak: the token flow, the redirect, the storage host.
    assert f"{reg.url}/token" in log and f"{storage.url}/store/" in log and "<redacted>" in log
    assert storage.seen("GET") and all("authorization" not in s.headers for s in storage.seen())
    assert any(
        s.headers.get("authorization") == f"Bearer {TOKEN}" for s in reg.seen("GET", "/v2/t/")
    )

    stored = db_text(tmp_path) + (tmp_path / "warmer.db").read_bytes().decode("latin-1")
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (
        PASSWORD,
        TOKEN,
        basic,
        SIGNATURE,
        CREDENTIAL,
        STS,
        f"Bearer {TOKEN}",
        "Basic " + basic,
    ):
        assert secret not in log, secret
        assert secret not in stored, secret
    for prefix in ("Authorization: Basic ", "Authorization: Bearer "):
        assert prefix not in log


# --- -vv logging: what httpx, httpcore or anyone logs is redacted ---------------------------

BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
LOGGED = [
    "receive_response_headers.complete return_value=(b'HTTP/1.1', 307, b'X', "
    f"[(b'Location', b'https://s3.example/b?X-Amz-Signature={SIGNATURE}"
    f"&X-Amz-Credential={CREDENTIAL}'), (b'Set-Cookie', b'session={TOKEN}'), "
    f"(b'WWW-Authenticate', b'Bearer realm=\"x\",token=\"{TOKEN}\"')])",
    f'HTTP Request: GET https://s3.example/b?X-Amz-Security-Token={STS} "HTTP/1.1 200 OK"',
    f"(b'Location', b'/relative?X-Amz-Signature={SIGNATURE}')",
    f"Authorization: Bearer {TOKEN}",
    f"Proxy-Authorization: Basic {BASIC}",
    f"{{'Authorization': 'Bearer {TOKEN}', 'Accept': 'x'}}",
    f'{{"token": "{TOKEN}", "access_token": "{TOKEN}", "expires_in": 300}}',
    f"grant_type=password&password={PASSWORD}&refresh_token={TOKEN}",
]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_redacts_credentials_and_query_strings(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from warmer.cli.common import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("httpx").level)
    try:
        configure_logging(fmt, 2)
        for i, text in enumerate(LOGGED):
            logging.getLogger("httpcore.http11" if i % 2 else "httpx").debug("%s", text)
        logging.getLogger("warmer.test").warning(
            "as fields", extra={"fields": {"url": f"http://h/x?X-Amz-Signature={SIGNATURE}"}}
        )
        try:
            raise ValueError(f"failed GET http://h/b?sig={SIGNATURE}")
        except ValueError:
            logging.getLogger("warmer.test").exception("with a traceback")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("httpx").setLevel(saved[2])
    err = capsys.readouterr().err
    for secret in (SIGNATURE, CREDENTIAL, STS, TOKEN, PASSWORD):
        assert secret not in err, secret
    # Still useful: method, host, path and status are kept.
    assert "GET https://s3.example/b?<redacted>" in err and "HTTP/1.1 200 OK" in err
    assert "/relative?<redacted>" in err and err.count("<redacted>") >= 12


def test_a_blob_longer_than_its_descriptor_is_cut_off() -> None:
    """A blob answer that goes on past the size the manifest declared is refused as invalid,
    not read to its end (the hash check alone would wait for an endless stream)."""
    from hostile_registry import Answer, HostileRegistry, sha256

    from warmer.oci.registry import InvalidResponse, RegistryClient

    data = b"layer" * 1000
    with HostileRegistry() as reg:
        path = f"/v2/t/app/blobs/{sha256(data)}"
        reg.set("GET", path, Answer(body=data + b"x" * 5_000_000))

        async def fetch(size: int | None) -> int:
            async with RegistryClient(reg.url) as client:
                return await client.fetch_blob("t/app", sha256(data), size=size)

        with pytest.raises(InvalidResponse, match=f"more than its {len(data)} bytes"):
            asyncio.run(fetch(len(data)))
        reg.set("GET", path, Answer(body=data))
        assert asyncio.run(fetch(len(data))) == len(data)
