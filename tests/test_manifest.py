"""Manifest parsing, platforms and index selection (pure, no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from warmer.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    ImageTree,
    ManifestFormatError,
    Platform,
    SchemaOneManifest,
    digest_of,
    parse_manifest,
    select_platforms,
    sha256_digest,
)


def d(n: int) -> str:
    return "sha256:" + f"{n:064x}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("Linux/AARCH64", Platform("linux", "arm64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_platform_parse(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected
    assert Platform.parse(str(expected)) == expected


@pytest.mark.parametrize("bad", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_platform_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="os/architecture"):
        Platform.parse(bad)


def entry(n: int, platform: str) -> Descriptor:
    return Descriptor(OCI_MANIFEST, d(n), 100 + n, Platform.parse(platform))


INDEX = [
    entry(1, "linux/amd64"),
    entry(2, "linux/arm64/v8"),
    entry(3, "linux/arm/v6"),
    entry(4, "linux/arm/v7"),
    Descriptor(OCI_MANIFEST, d(5), 50, Platform("unknown", "unknown")),  # attestation
    entry(6, "windows/amd64"),
]


@pytest.mark.parametrize(
    ("wanted", "digests"),
    [
        ([], [1]),  # default linux/amd64
        (["linux/arm64"], [2]),  # no variant asked: arm64's v8 matches
        (["linux/arm64/v8"], [2]),
        (["linux/arm"], [4]),  # no variant: the highest one
        (["linux/arm/v6"], [3]),
        (["linux/arm/v5"], []),
        (["linux/arm64", "linux/amd64", "linux/arm64"], [2, 1]),  # order asked, no repeats
        (["linux/s390x"], []),
        (["windows/amd64"], [6]),
    ],
)
def test_select_platforms(wanted: list[str], digests: list[int]) -> None:
    chosen = select_platforms(INDEX, [Platform.parse(w) for w in wanted])
    assert [c.digest for c in chosen] == [d(n) for n in digests]


def manifest_json(**extra: Any) -> bytes:
    data = {
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": d(10), "size": 7},
        "layers": [{"mediaType": OCI_LAYER, "digest": d(11), "size": 70}],
    }
    data.update(extra)
    return json.dumps(data).encode()


def test_parse_manifest_types() -> None:
    body = manifest_json(mediaType=DOCKER_MANIFEST)
    m = parse_manifest(body, sha256_digest(body), DOCKER_MANIFEST)
    assert m.media_type == DOCKER_MANIFEST and not m.is_index and m.size == len(body)
    assert m.config == Descriptor(OCI_CONFIG, d(10), 7) and [x.digest for x in m.layers] == [d(11)]
    # OCI allows mediaType to be absent: told apart by shape, or by Content-Type.
    assert parse_manifest(manifest_json(), "sha256:0", None).media_type == OCI_MANIFEST
    idx = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_manifest(idx, "sha256:0", "application/json").media_type == OCI_INDEX
    lst = json.dumps({"schemaVersion": 2, "manifests": [], "mediaType": DOCKER_LIST}).encode()
    assert parse_manifest(lst, "sha256:0", None).is_index


@pytest.mark.parametrize(
    ("body", "ctype", "exc", "match"),
    [
        (b"{}", DOCKER_SCHEMA1, SchemaOneManifest, "schema 1"),
        (
            b'{"schemaVersion": 1, "fsLayers": []}',
            "application/json",
            SchemaOneManifest,
            "schema 1",
        ),
        (b"not json", None, ManifestFormatError, "not JSON"),
        (b"[1]", None, ManifestFormatError, "not a JSON object"),
        (
            b'{"schemaVersion": 2, "mediaType": "text/plain"}',
            None,
            ManifestFormatError,
            "text/plain",
        ),
        (
            manifest_json(layers=[{"digest": "nocolon", "size": 1}]),
            OCI_MANIFEST,
            ManifestFormatError,
            "valid digest",
        ),
        (
            manifest_json(layers=[{"digest": d(1), "size": -1}]),
            OCI_MANIFEST,
            ManifestFormatError,
            "valid size",
        ),
    ],
)
def test_parse_manifest_rejects(body: bytes, ctype: str | None, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        parse_manifest(body, "sha256:abc", ctype)


def test_digest_of_algorithms() -> None:
    assert digest_of(b"x") == sha256_digest(b"x")
    assert digest_of(b"x", "sha512:00").startswith("sha512:")
    with pytest.raises(ManifestFormatError):
        digest_of(b"x", "md5:00")


def test_image_tree_dedupes_and_sums() -> None:
    def img(n: int, layers: list[int]) -> Any:
        body = manifest_json(
            config={"mediaType": OCI_CONFIG, "digest": d(100 + n), "size": 5},
            layers=[{"mediaType": OCI_LAYER, "digest": d(x), "size": x * 10} for x in layers],
        )
        return parse_manifest(body, sha256_digest(body), OCI_MANIFEST)

    a, b = img(1, [1, 2]), img(2, [1, 3])
    index_body = b'{"schemaVersion":2,"manifests":[]}'
    index = parse_manifest(index_body, sha256_digest(index_body), OCI_INDEX)
    tree = ImageTree(
        "r",
        "latest",
        index.digest,
        OCI_INDEX,
        index.size,
        index,
        [
            (Descriptor(OCI_MANIFEST, a.digest, a.size), a),
            (Descriptor(OCI_MANIFEST, b.digest, b.size), b),
        ],
    )
    assert [x.digest for x in tree.blobs()] == [d(101), d(1), d(2), d(102), d(3)]
    assert tree.manifest_digests() == [
        (index.digest, index.size),
        (a.digest, a.size),
        (b.digest, b.size),
    ]
    assert tree.total_size() == index.size + a.size + b.size + 5 + 10 + 20 + 5 + 30


# --- values from a registry: the validators ---------------------------------------------

import contextlib  # noqa: E402
import re  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from warmer.oci.validate import (  # noqa: E402
    MAX_SIZE,
    InvalidValue,
    check_content_type,
    check_digest,
    check_media_type,
    check_param,
    check_repository,
    check_size,
    check_size_text,
    check_tag,
    check_token,
    check_url,
)

VALIDATORS = [
    check_digest, check_size, check_size_text, check_media_type, check_repository, check_tag,
    check_url, check_param, check_token,
]  # fmt: skip


@pytest.mark.parametrize(
    "good", ["sha256:" + "0" * 64, "sha256:" + "af" * 32, "sha512:" + "9" * 128]
)
def test_check_digest_accepts(good: str) -> None:
    assert check_digest(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha512:" + "a" * 64,
        "md5:" + "a" * 32, "sha384:" + "a" * 96, ":" + "a" * 64, "a" * 64, "",
        "sha256:" + "a" * 64 + "\n", "sha256:0000;touch /tmp/x;echo", " sha256:" + "a" * 64,
        "SHA256:" + "a" * 64, "sha256:" + "ａ" * 64, None, 5, b"sha256:" + b"a" * 64,
    ],
)  # fmt: skip
def test_check_digest_refuses(bad: object) -> None:
    with pytest.raises(InvalidValue) as info:
        check_digest(bad, "Docker-Content-Digest")
    assert "\n" not in str(info.value) and "Docker-Content-Digest" in str(info.value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (1, True), (MAX_SIZE, True), (MAX_SIZE + 1, False), (-1, False),
     (True, False), (False, False), (1.0, False), ("1", False), (None, False), (2**64, False)],
)  # fmt: skip
def test_check_size(value: object, ok: bool) -> None:
    if ok:
        assert check_size(value) == value
    else:
        with pytest.raises(InvalidValue):
            check_size(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("42", 42), (" 7 ", 7), ("-1", None), ("1e3", None), ("", None), ("٣", None),
     ("0x10", None), ("99999999999999999", None), ("1_000", None)],
)  # fmt: skip
def test_check_size_text(text: str, size: int | None) -> None:
    if size is not None:
        assert check_size_text(text) == size
    else:
        with pytest.raises(InvalidValue):
            check_size_text(text)


def test_media_types() -> None:
    assert check_media_type(OCI_MANIFEST) == OCI_MANIFEST
    assert check_media_type("Application/VND.Docker+JSON") == "application/vnd.docker+json"
    assert check_content_type("application/json; charset=utf-8") == "application/json"
    assert check_content_type(None) == check_content_type("  ") == ""
    for bad in ["x", "a/b/c", "a/", "/b", "a b/c", "text/html<x>", "a/b\n", "-a/b", "é/b"]:
        with pytest.raises(InvalidValue):
            check_media_type(bad)
    with pytest.raises(InvalidValue, match="parameters"):
        check_media_type("application/json; charset=utf-8")


def test_urls_params_and_tokens() -> None:
    assert check_url("https://auth.example/token?x=1") == "https://auth.example/token?x=1"
    for bad in ["file:///etc/passwd", "ftp://h/x", "javascript:alert(1)", "http://", "http://a b/",
                "http://u:p@h/", "http://h:99999/", "http://h/\n", "//h/x", "/relative"]:  # fmt: skip
        with pytest.raises(InvalidValue):
            check_url(bad)
    assert check_param("repository:a/b:pull repository:c:pull", "scope")
    for bad in ["", "a\nb", "a\x07", "x" * 2000, "a  b"]:
        with pytest.raises(InvalidValue):
            check_param(bad, "scope")
    assert check_token("eyJ.abc-_~+/=") == "eyJ.abc-_~+/="
    with pytest.raises(InvalidValue) as info:
        check_token("secret\r\nX: y")
    assert "secret" not in str(info.value)  # a token is never shown


_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=80)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_ANY)
def test_validators_raise_only_invalid_value(value: object) -> None:
    for check in VALIDATORS:
        try:
            out = check(value, "value")  # type: ignore[operator]
        except InvalidValue as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400
            continue
        if isinstance(out, str):
            assert out.isprintable() and "\n" not in out


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

_GRAMMAR_TEXT = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"sha(256|512):[0-9a-fA-F]{60,130}\n?", fullmatch=True),
    st.from_regex(r"[a-z]{1,10}/[a-z0-9.+-]{1,20}(;.*)?", fullmatch=True),
)


@settings(max_examples=400, deadline=None)
@given(_GRAMMAR_TEXT)
def test_accepted_values_match_their_grammar(text: str) -> None:
    with contextlib.suppress(InvalidValue):
        assert re.fullmatch(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", check_digest(text))
    try:
        media_type = check_content_type(text)
        assert media_type == "" or re.fullmatch(
            r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", media_type
        )
    except InvalidValue:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), _ANY.map(lambda v: json.dumps(v, default=repr).encode())))
def test_parse_manifest_raises_only_manifest_format_error(body: bytes) -> None:
    for ctype in (None, OCI_MANIFEST, OCI_INDEX, "text/plain"):
        try:
            m = parse_manifest(body, sha256_digest(body), ctype)
        except ManifestFormatError:
            continue
        for d in [*m.manifests, *m.layers, *([m.config] if m.config else [])]:
            assert check_digest(d.digest) and check_size(d.size) >= 0


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "digest": st.one_of(st.just(d(1)), _JSON),
            "size": st.one_of(st.just(1), _JSON),
            "mediaType": st.one_of(st.just(OCI_LAYER), _JSON),
            "platform": _JSON,
        },
    )
)
def test_descriptors_of_any_shape(data: dict[str, object]) -> None:
    body = manifest_json(layers=[data])
    try:
        m = parse_manifest(body, sha256_digest(body), OCI_MANIFEST)
    except ManifestFormatError:
        return
    (layer,) = m.layers
    assert layer.digest == d(1) and layer.size == 1
