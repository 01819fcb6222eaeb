"""Table-driven tests of image reference parsing against Docker's normalisation rules."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from warmer.cli.main import cli
from warmer.oci.reference import InvalidReference, parse

H = "a" * 64
D = f"sha256:{H}"

# (input, canonical, registry, repository, tag, digest)
VALID: list[tuple[str, str, str, str, str | None, str | None]] = [
    ("ubuntu", "docker.io/library/ubuntu:latest", "docker.io", "library/ubuntu", "latest", None),
    (
        "ubuntu:22.04",
        "docker.io/library/ubuntu:22.04",
        "docker.io",
        "library/ubuntu",
        "22.04",
        None,
    ),
    ("user/app", "docker.io/user/app:latest", "docker.io", "user/app", "latest", None),
    ("user/app:v1", "docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
    (
        "library/ubuntu",
        "docker.io/library/ubuntu:latest",
        "docker.io",
        "library/ubuntu",
        "latest",
        None,
    ),
    (
        "docker.io/ubuntu",
        "docker.io/library/ubuntu:latest",
        "docker.io",
        "library/ubuntu",
        "latest",
        None,
    ),
    (
        "docker.io/library/ubuntu:20.04",
        "docker.io/library/ubuntu:20.04",
        "docker.io",
        "library/ubuntu",
        "20.04",
        None,
    ),
    (
        "index.docker.io/ubuntu",
        "docker.io/library/ubuntu:latest",
        "docker.io",
        "library/ubuntu",
        "latest",
        None,
    ),
    ("index.docker.io/user/app:1", "docker.io/user/app:1", "docker.io", "user/app", "1", None),
    ("ghcr.io/owner/repo", "ghcr.io/owner/repo:latest", "ghcr.io", "owner/repo", "latest", None),
    ("ghcr.io/owner/repo:main", "ghcr.io/owner/repo:main", "ghcr.io", "owner/repo", "main", None),
    ("ghcr.io/o/r/deep/path:t", "ghcr.io/o/r/deep/path:t", "ghcr.io", "o/r/deep/path", "t", None),
    (
        "quay.io/coreos/etcd:v3.5.0",
        "quay.io/coreos/etcd:v3.5.0",
        "quay.io",
        "coreos/etcd",
        "v3.5.0",
        None,
    ),
    (
        "gcr.io/distroless/static",
        "gcr.io/distroless/static:latest",
        "gcr.io",
        "distroless/static",
        "latest",
        None,
    ),
    ("localhost/app", "localhost/app:latest", "localhost", "app", "latest", None),
    ("localhost:5000/app", "localhost:5000/app:latest", "localhost:5000", "app", "latest", None),
    ("localhost:5000/app:1.0", "localhost:5000/app:1.0", "localhost:5000", "app", "1.0", None),
    (
        "127.0.0.1:5000/team/app:x",
        "127.0.0.1:5000/team/app:x",
        "127.0.0.1:5000",
        "team/app",
        "x",
        None,
    ),
    ("registry:5000/app", "registry:5000/app:latest", "registry:5000", "app", "latest", None),
    ("Registry/app", "Registry/app:latest", "Registry", "app", "latest", None),
    ("MyHost/team/app:1", "MyHost/team/app:1", "MyHost", "team/app", "1", None),
    ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000", "app", "latest", None),
    ("[2001:db8::1]/app:v", "[2001:db8::1]/app:v", "[2001:db8::1]", "app", "v", None),
    ("[fe80::1]:443/a/b", "[fe80::1]:443/a/b:latest", "[fe80::1]:443", "a/b", "latest", None),
    (
        "my-registry.example.com/a",
        "my-registry.example.com/a:latest",
        "my-registry.example.com",
        "a",
        "latest",
        None,
    ),
    ("a.b.c.d:1/x", "a.b.c.d:1/x:latest", "a.b.c.d:1", "x", "latest", None),
    (f"ubuntu@{D}", f"docker.io/library/ubuntu@{D}", "docker.io", "library/ubuntu", None, D),
    (
        f"ubuntu:22.04@{D}",
        f"docker.io/library/ubuntu:22.04@{D}",
        "docker.io",
        "library/ubuntu",
        "22.04",
        D,
    ),
    (f"ghcr.io/o/r@{D}", f"ghcr.io/o/r@{D}", "ghcr.io", "o/r", None, D),
    (f"localhost:5000/app:t@{D}", f"localhost:5000/app:t@{D}", "localhost:5000", "app", "t", D),
    ("foo_bar", "docker.io/library/foo_bar:latest", "docker.io", "library/foo_bar", "latest", None),
    (
        "foo__bar",
        "docker.io/library/foo__bar:latest",
        "docker.io",
        "library/foo__bar",
        "latest",
        None,
    ),
    ("foo.bar", "docker.io/library/foo.bar:latest", "docker.io", "library/foo.bar", "latest", None),
    ("foo-bar", "docker.io/library/foo-bar:latest", "docker.io", "library/foo-bar", "latest", None),
    (
        "foo---bar",
        "docker.io/library/foo---bar:latest",
        "docker.io",
        "library/foo---bar",
        "latest",
        None,
    ),
    ("a/b/c", "docker.io/a/b/c:latest", "docker.io", "a/b/c", "latest", None),
    ("a0/b1", "docker.io/a0/b1:latest", "docker.io", "a0/b1", "latest", None),
    ("x:_tag", "docker.io/library/x:_tag", "docker.io", "library/x", "_tag", None),
    (
        "x:Tag-With.Mixed_Case",
        "docker.io/library/x:Tag-With.Mixed_Case",
        "docker.io",
        "library/x",
        "Tag-With.Mixed_Case",
        None,
    ),
    (
        "x:" + "t" * 128,
        "docker.io/library/x:" + "t" * 128,
        "docker.io",
        "library/x",
        "t" * 128,
        None,
    ),
    (
        "python:3.12-slim-bookworm",
        "docker.io/library/python:3.12-slim-bookworm",
        "docker.io",
        "library/python",
        "3.12-slim-bookworm",
        None,
    ),
    ("node:20", "docker.io/library/node:20", "docker.io", "library/node", "20", None),
    ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2", "docker.io", "bitnami/redis", "7.2", None),
    (
        "mcr.microsoft.com/dotnet/sdk:8.0",
        "mcr.microsoft.com/dotnet/sdk:8.0",
        "mcr.microsoft.com",
        "dotnet/sdk",
        "8.0",
        None,
    ),
    (
        "public.ecr.aws/nginx/nginx:1.25",
        "public.ecr.aws/nginx/nginx:1.25",
        "public.ecr.aws",
        "nginx/nginx",
        "1.25",
        None,
    ),
    (
        "a" * 63,
        "docker.io/library/" + "a" * 63 + ":latest",
        "docker.io",
        "library/" + "a" * 63,
        "latest",
        None,
    ),
    (
        "a" * 65,
        "docker.io/library/" + "a" * 65 + ":latest",
        "docker.io",
        "library/" + "a" * 65,
        "latest",
        None,
    ),
    (f"u/{H}", f"docker.io/u/{H}:latest", "docker.io", f"u/{H}", "latest", None),
    (
        "example.com/" + "a" * 200,
        "example.com/" + "a" * 200 + ":latest",
        "example.com",
        "a" * 200,
        "latest",
        None,
    ),
    (
        f"x@sha512:{'b' * 128}",
        f"docker.io/library/x@sha512:{'b' * 128}",
        "docker.io",
        "library/x",
        None,
        f"sha512:{'b' * 128}",
    ),
    (
        f"x@md5+b64:{'c' * 32}",
        f"docker.io/library/x@md5+b64:{'c' * 32}",
        "docker.io",
        "library/x",
        None,
        f"md5+b64:{'c' * 32}",
    ),
]

# (input, fragment of the error message)
INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    (" ubuntu", "whitespace"),
    ("ubuntu ", "whitespace"),
    ("Ubuntu", "lower-case"),
    ("user/App", "lower-case"),
    ("docker.io/Library/ubuntu", "lower-case"),
    ("ubuntu:", "empty tag"),
    ("ubuntu@", "empty digest"),
    ("ubuntu:-tag", "invalid tag"),
    ("ubuntu:.tag", "invalid tag"),
    ("ubuntu:ta g", "invalid tag"),
    ("ubuntu:" + "t" * 129, "invalid tag"),
    ("ubuntu:tag:tag", "invalid"),
    (H, "image ID"),
    ("ubuntu@sha256:abc", "64 lower-case hex"),
    (f"ubuntu@sha256:{'A' * 64}", "64 lower-case hex"),
    (f"ubuntu@sha256:{'a' * 63}", "64 lower-case hex"),
    (f"ubuntu@sha256:{'a' * 65}", "64 lower-case hex"),
    ("ubuntu@sha256", "invalid digest"),
    ("ubuntu@:abc", "invalid digest"),
    (f"ubuntu@1sha:{'a' * 64}", "invalid digest"),
    (f"ubuntu@sha512:{'a' * 64}", "128 lower-case hex"),
    ("_ubuntu", "invalid repository name"),
    ("ubuntu_", "invalid repository name"),
    ("-ubuntu", "invalid repository name"),
    ("ubuntu-", "invalid repository name"),
    ("ubu___ntu", "invalid repository name"),
    ("ubu..ntu", "invalid repository name"),
    ("ubu._ntu", "invalid repository name"),
    ("a//b", "invalid repository name"),
    ("a/b/", "invalid repository name"),
    ("/ubuntu", "invalid"),
    ("example.com/", "missing repository path"),
    ("example.com", "invalid"),  # a host alone: docker.io/library/example.com is valid? see below
    ("-host.com/app", "invalid registry host"),
    ("host-.com/app", "invalid registry host"),
    ("host_name.com/app", "invalid registry host"),
    ("[::1/app", "invalid registry host"),
    ("host:port/app", "invalid registry host"),
    ("example.com/" + "a" * 250, "255 characters"),
    ("ubuntu:tag@", "empty digest"),
    (":tag", "missing repository"),
    ("@" + D, "missing repository"),
    ("a b", "invalid"),
    ("ubuntu!", "invalid"),
    ("ubuntu/é", "invalid"),
    ("ubuntu:t\u00e9", "invalid tag"),
]
# "example.com" alone has no slash, so Docker reads it as docker.io/library/example.com, a valid
# name. Keep the table honest: move it to the valid cases.
INVALID = [case for case in INVALID if case[0] != "example.com"]
VALID.append(
    (
        "example.com",
        "docker.io/library/example.com:latest",
        "docker.io",
        "library/example.com",
        "latest",
        None,
    )
)


def test_table_sizes() -> None:
    assert len(VALID) + len(INVALID) >= 80


@pytest.mark.parametrize(("text", "canonical", "registry", "repository", "tag", "digest"), VALID)
def test_valid(
    text: str, canonical: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert str(ref) == canonical
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    # Canonical form is a fixed point.
    assert parse(str(ref)) == ref


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value) or text == ""


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("ubuntu", "ubuntu:latest"),
        ("docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
        ("user/app:1", "user/app:1"),
        ("ghcr.io/o/r:t", "ghcr.io/o/r:t"),
        (f"ubuntu@{D}", f"ubuntu@{D}"),
        ("library/a/b", "library/a/b:latest"),
    ],
)
def test_familiar(text: str, familiar: str) -> None:
    assert parse(text).familiar == familiar


def test_with_digest_and_reference() -> None:
    ref = parse("python:3.12")
    pinned = ref.with_digest(D)
    assert str(pinned) == f"docker.io/library/python:3.12@{D}"
    assert pinned.reference == D
    assert ref.reference == "3.12"
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:nothex")


def test_cli_ref_json() -> None:
    result = CliRunner().invoke(cli, ["ref", "--json", "ubuntu", f"ghcr.io/o/r:t@{D}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows[0] == {
        "input": "ubuntu",
        "canonical": "docker.io/library/ubuntu:latest",
        "registry": "docker.io",
        "repository": "library/ubuntu",
        "tag": "latest",
        "digest": None,
        "familiar": "ubuntu:latest",
    }
    assert rows[1]["digest"] == D and rows[1]["tag"] == "t"


def test_cli_ref_invalid_exit_2() -> None:
    result = CliRunner().invoke(cli, ["ref", "ubuntu", "Bad/Name:x", "alsobad!"])
    assert result.exit_code == 2
    assert "Bad/Name:x" in result.output
    assert "alsobad" not in result.output.split("error:")[-1]
    assert "Traceback" not in result.output


# --- property-based: arbitrary text never raises anything but InvalidReference ------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from warmer.oci.reference import try_parse  # noqa: E402

# Text built from the grammar's own pieces (and its neighbours) reaches the deep branches
# more often than uniform Unicode does.
_PIECES = st.sampled_from(
    ["a", "Z", "0", "9", ".", "_", "__", "-", "/", ":", "@", "sha256", "sha512", "f" * 32,
     "a" * 64, "localhost", "[::1]", "\n", " ", "\t", "\x00", "é", "\u2028", "docker.io",
     "index.docker.io", "library", "%", "?", "#", "$(", "`", ";"]
)  # fmt: skip
_REFERENCE_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(_PIECES, max_size=40).map("".join),
)


@settings(max_examples=600, deadline=None)
@given(_REFERENCE_TEXT)
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference as exc:
        assert isinstance(exc, ValueError) and "\n" not in exc.why
        assert try_parse(text) is None
        return
    # Whatever parses is canonical, one line, and a fixed point.
    canonical = str(ref)
    assert canonical.isprintable() and canonical.isascii() and " " not in canonical
    assert parse(canonical) == ref and try_parse(text) == ref


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_with_tag_and_with_digest_raise_only_invalid_reference(tag: str, digest: str) -> None:
    ref = parse("python:3.12")
    for make, value in ((ref.with_tag, tag), (ref.with_digest, digest)):
        try:
            out = make(value)
        except InvalidReference:
            continue
        assert "\n" not in str(out) and parse(str(out)).repository == ref.repository


@pytest.mark.parametrize(
    "text",
    [
        "ubuntu\n@sha256:" + "a" * 64,  # '$' matched before a trailing newline
        "library/ubuntu\n:tag",
        "ubuntu:tag\n",
        "ubuntu@sha256:" + "a" * 64 + "\n",
    ],
)
def test_a_newline_is_never_part_of_a_reference(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse(text)
    with pytest.raises(InvalidReference):
        parse("python:3.12").with_tag("v1\n")
    with pytest.raises(InvalidReference):
        parse("python:3.12").with_digest(D + "\n")
