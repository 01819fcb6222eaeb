"""Manifest parsing, platforms and index selection (pure, no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from warmer.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_INDEX,
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
        "config": {"mediaType": "x", "digest": d(10), "size": 7},
        "layers": [{"mediaType": "y", "digest": d(11), "size": 70}],
    }
    data.update(extra)
    return json.dumps(data).encode()


def test_parse_manifest_types() -> None:
    body = manifest_json(mediaType=DOCKER_MANIFEST)
    m = parse_manifest(body, sha256_digest(body), DOCKER_MANIFEST)
    assert m.media_type == DOCKER_MANIFEST and not m.is_index and m.size == len(body)
    assert m.config == Descriptor("x", d(10), 7) and [x.digest for x in m.layers] == [d(11)]
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
            config={"mediaType": "c", "digest": d(100 + n), "size": 5},
            layers=[{"mediaType": "l", "digest": d(x), "size": x * 10} for x in layers],
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
