"""A deterministic catalogue of images that looks like real Docker Hub use (pure: no I/O).

Official-image-like repositories (``library/debian``, ``alpine``, ``python``, ``node``,
``golang``, ``nginx``, ``redis``) and two ``someorg/...`` application images. Families sit on
shared bases (a debian-like base under python/node/golang/nginx/redis/postgres/ruby/rust/
httpd/mysql, ubuntu-like ones under eclipse-temurin, an alpine-like one under the ``-alpine``
tags), tags of a family share their family layers, several tags alias
the same manifest (``latest``, ``3``, ``12``), official images are multi-arch OCI indexes
(linux/amd64 + linux/arm64) and the ``someorg`` ones single-arch Docker v2 schema 2.

Layer sizes follow a lognormal (heavy-tailed) law times ``scale``: ``scale=1`` gives 67 tags
of 19 repositories and about 500 MB of distinct blobs (340 MB of linux/amd64 (repository,
blob) pairs), ``scale=0.01`` a few MB for tests. Layers are random bytes
drawn from a generator seeded by (seed, layer name, arch), so the same seed always gives the
same digests. They are labelled ``tar+gzip`` as on Docker Hub but are not gzip: mirrors and
``skopeo copy ... dir:`` store blobs as opaque bytes; ``diff_ids`` therefore equal the layer
digests.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MULTI_ARCH = ("linux/amd64", "linux/arm64")
EPOCH = datetime(2024, 6, 1, tzinfo=UTC)
MIN_LAYER = 512
UNIT = 650_000  # bytes per nominal MB in the recipes below


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=3).encode()


@dataclass(frozen=True)
class Layer:
    """A layer blob: ``size`` random bytes drawn from the seed string ``key``."""

    key: str
    size: int

    def data(self) -> bytes:
        return random.Random(self.key).randbytes(self.size)

    @cached_property
    def digest(self) -> str:
        return sha256(self.data())


@dataclass(frozen=True)
class Image:
    """One platform's image: its layers, config JSON and manifest JSON."""

    repository: str
    platform: str
    layers: tuple[Layer, ...]
    history: tuple[str, ...]
    created: datetime
    cmd: tuple[str, ...]
    docker_format: bool = False

    @property
    def os(self) -> str:
        return self.platform.split("/")[0]

    @property
    def architecture(self) -> str:
        return self.platform.split("/")[1]

    @cached_property
    def config(self) -> bytes:
        stamp = self.created.strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.architecture == "arm64":
            body["variant"] = "v8"
        body["created"] = stamp
        body["config"] = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": list(self.cmd),
        }
        body["rootfs"] = {"type": "layers", "diff_ids": [layer.digest for layer in self.layers]}
        body["history"] = [{"created": stamp, "created_by": h} for h in self.history]
        return _dumps(body)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def media_type(self) -> str:
        return DOCKER_MANIFEST if self.docker_format else OCI_MANIFEST

    @cached_property
    def manifest(self) -> bytes:
        layer_type = DOCKER_LAYER if self.docker_format else OCI_LAYER
        config = {
            "mediaType": DOCKER_CONFIG if self.docker_format else OCI_CONFIG,
            "digest": self.config_digest,
            "size": len(self.config),
        }
        layers = [
            {"mediaType": layer_type, "digest": x.digest, "size": x.size} for x in self.layers
        ]
        return _dumps(
            {"schemaVersion": 2, "mediaType": self.media_type, "config": config, "layers": layers}
        )

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def size(self) -> int:
        return len(self.config) + sum(x.size for x in self.layers)


@dataclass(frozen=True)
class Tag:
    """``repository:tag`` -> a single manifest or an OCI index over ``images``."""

    repository: str
    tag: str
    images: tuple[Image, ...]
    index: bool = False

    @property
    def media_type(self) -> str:
        return OCI_INDEX if self.index else self.images[0].media_type

    @cached_property
    def manifest(self) -> bytes:
        if not self.index:
            return self.images[0].manifest
        entries = []
        for image in self.images:
            platform = {"architecture": image.architecture, "os": image.os}
            if image.architecture == "arm64":
                platform["variant"] = "v8"
            entries.append(
                {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": platform,
                }
            )
        return _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    def image(self, platform: str = "linux/amd64") -> Image:
        for image in self.images:
            if image.platform == platform:
                return image
        raise KeyError(f"{self.reference} has no {platform} image")


#: Repositories the sandbox signs in cosign's format when asked (``seed.sign_catalogue``):
#: the organisation's own images, as a team signing what it builds would.
SIGNED = ("someorg/app", "someorg/api")


@dataclass(frozen=True)
class Catalogue:
    seed: int
    scale: float
    tags: tuple[Tag, ...] = field(default=())

    @property
    def repositories(self) -> list[str]:
        return sorted({t.repository for t in self.tags})

    def tag(self, repository: str, tag: str) -> Tag:
        for t in self.tags:
            if t.repository == repository and t.tag == tag:
                return t
        raise KeyError(f"{repository}:{tag} is not in the catalogue")

    def only(self, *repositories: str) -> Catalogue:
        """The same catalogue restricted to ``repositories`` (to seed less)."""
        return replace(self, tags=tuple(t for t in self.tags if t.repository in repositories))

    def tags_of(self, repository: str) -> list[Tag]:
        return [t for t in self.tags if t.repository == repository]

    def blobs(self, repository: str) -> dict[str, Layer | bytes]:
        """Distinct blobs of a repository: digest -> a Layer or a config body."""
        out: dict[str, Layer | bytes] = {}
        for t in self.tags_of(repository):
            for image in t.images:
                for layer in image.layers:
                    out[layer.digest] = layer
                out[image.config_digest] = image.config
        return out

    def layers(self) -> dict[str, Layer]:
        """Distinct layers over the whole catalogue."""
        return {x.digest: x for t in self.tags for i in t.images for x in i.layers}

    def total_bytes(self) -> int:
        return sum(x.size for x in self.layers().values())


# name, base, extra layers (name, median MB), tags -> (aliases)
_BASES: dict[str, tuple[str, float]] = {
    "bookworm": ("debian:bookworm", 8.0),
    "bullseye": ("debian:bullseye", 8.0),
    "bookworm-slim": ("debian:bookworm-slim", 6.0),
    "alpine3.20": ("alpine:3.20", 3.0),
    "alpine3.19": ("alpine:3.19", 3.0),
    "noble": ("ubuntu:noble", 9.0),
    "jammy": ("ubuntu:jammy", 9.0),
    "busybox": ("busybox:1.36", 1.0),
}

# repository -> list of (tag aliases, base, layers [(name, median MB)], docker_format, multi_arch)
_Recipe = tuple[tuple[str, ...], str, tuple[tuple[str, float], ...]]
_FAMILIES: dict[str, list[_Recipe]] = {
    "library/debian": [
        (("bookworm", "12", "latest"), "bookworm", ()),
        (("bullseye", "11"), "bullseye", ()),
        (("bookworm-slim", "12-slim"), "bookworm-slim", ()),
    ],
    "library/alpine": [(("3.20", "latest"), "alpine3.20", ()), (("3.19",), "alpine3.19", ())],
    "library/python": [
        (
            ("3.12", "3", "latest"),
            "bookworm",
            (("python:deps:bookworm", 6), ("python:3.12", 4), ("python:pip3.12", 0.5)),
        ),
        (
            ("3.11",),
            "bookworm",
            (("python:deps:bookworm", 6), ("python:3.11", 4), ("python:pip3.11", 0.5)),
        ),
        (("3.12-slim",), "bookworm-slim", (("python:slimdeps", 1), ("python:3.12-slim", 3))),
        (("3.12-alpine",), "alpine3.20", (("python:apkdeps", 0.8), ("python:3.12-alpine", 3))),
    ],
    "library/node": [
        (
            ("22", "latest"),
            "bookworm",
            (("node:deps:bookworm", 6), ("node:22", 5), ("node:yarn", 1)),
        ),
        (("20", "lts"), "bookworm", (("node:deps:bookworm", 6), ("node:20", 5), ("node:yarn", 1))),
        (("20-alpine",), "alpine3.20", (("node:20-alpine", 4), ("node:yarn-alpine", 1))),
    ],
    "library/golang": [
        (("1.23", "latest"), "bookworm", (("golang:deps", 5), ("golang:1.23", 8))),
        (("1.22",), "bookworm", (("golang:deps", 5), ("golang:1.22", 8))),
        (("1.23-alpine",), "alpine3.20", (("golang:1.23-alpine", 8),)),
    ],
    "library/nginx": [
        (("1.27", "latest"), "bookworm-slim", (("nginx:1.27", 2), ("nginx:conf", 0.01))),
        (("1.27-alpine",), "alpine3.20", (("nginx:1.27-alpine", 1.5), ("nginx:conf", 0.01))),
    ],
    "library/redis": [
        (("7.4", "latest"), "bookworm-slim", (("redis:7.4", 2), ("redis:conf", 0.01)))
    ],
    "library/ubuntu": [
        (("noble", "24.04", "latest"), "noble", ()),
        (("jammy", "22.04"), "jammy", ()),
    ],
    "library/busybox": [(("1.36", "latest"), "busybox", ())],
    "library/postgres": [
        (("16", "latest"), "bookworm", (("postgres:deps", 4), ("postgres:16", 6))),
        (("15",), "bookworm", (("postgres:deps", 4), ("postgres:15", 6))),
        (("16-alpine",), "alpine3.20", (("postgres:16-alpine", 5),)),
    ],
    "library/ruby": [
        (("3.3", "latest"), "bookworm", (("ruby:deps:bookworm", 6), ("ruby:3.3", 4))),
        (("3.3-slim",), "bookworm-slim", (("ruby:slimdeps", 1), ("ruby:3.3-slim", 3))),
        (("3.3-alpine",), "alpine3.20", (("ruby:3.3-alpine", 3),)),
    ],
    "library/rust": [
        (("1.80", "latest"), "bookworm", (("rust:deps:bookworm", 6), ("rust:1.80", 12))),
        (("1.80-slim",), "bookworm-slim", (("rust:1.80-slim", 10),)),
        (("1.80-alpine",), "alpine3.20", (("rust:1.80-alpine", 10),)),
    ],
    "library/eclipse-temurin": [
        (("21", "latest"), "noble", (("temurin:deps", 2), ("temurin:21", 8))),
        (("17",), "jammy", (("temurin:deps", 2), ("temurin:17", 8))),
        (("21-alpine",), "alpine3.20", (("temurin:21-alpine", 7),)),
    ],
    "library/httpd": [
        (("2.4", "latest"), "bookworm-slim", (("httpd:2.4", 2), ("httpd:conf", 0.01))),
        (("2.4-alpine",), "alpine3.20", (("httpd:2.4-alpine", 1.5), ("httpd:conf", 0.01))),
    ],
    "library/mysql": [
        (("8.4", "latest"), "bookworm-slim", (("mysql:8.4", 12),)),
        (("8.0",), "bookworm-slim", (("mysql:8.0", 12),)),
    ],
}
# Application images built FROM an official tag: (tags, from "repo:tag", layers); amd64 only.
_APPS: dict[str, list[tuple[tuple[str, ...], str, tuple[tuple[str, float], ...]]]] = {
    "someorg/app": [
        (("v1.0",), "library/python:3.12-slim", (("app:reqs1.0", 3), ("app:src1.0", 0.3))),
        (
            ("v1.1", "latest"),
            "library/python:3.12-slim",
            (("app:reqs1.0", 3), ("app:src1.1", 0.3)),
        ),
    ],
    "someorg/worker": [
        (("v2", "latest"), "library/node:20-alpine", (("worker:modules", 2), ("worker:src", 0.2)))
    ],
    "someorg/api": [
        (("v3", "latest"), "library/golang:1.23-alpine", (("api:vendor", 4), ("api:bin", 1)))
    ],
    "someorg/web": [(("v1",), "library/nginx:1.27-alpine", (("web:assets", 3),))],
}


class _Builder:
    def __init__(self, seed: int, scale: float) -> None:
        self.seed, self.scale = seed, scale
        self.layers: dict[tuple[str, str], Layer] = {}

    def layer(self, name: str, median_mb: float, arch: str, sigma: float = 0.9) -> Layer:
        """The same (name, arch) is the same Layer everywhere: that is how layers are shared."""
        if (name, arch) not in self.layers:
            rng = random.Random(f"{self.seed}/size/{name}/{arch}")
            mb = min(rng.lognormvariate(math.log(median_mb), sigma), median_mb * 8)
            size = max(MIN_LAYER, int(mb * UNIT * self.scale))
            self.layers[(name, arch)] = Layer(f"{self.seed}/bytes/{name}/{arch}", size)
        return self.layers[(name, arch)]

    def created(self, name: str) -> datetime:
        days = random.Random(f"{self.seed}/created/{name}").randrange(0, 120)
        return EPOCH + timedelta(days=days, hours=days % 24)

    def image(
        self, repo: str, platform: str, base: Image | str, extra: tuple[tuple[str, float], ...],
        docker_format: bool,
    ) -> Image:  # fmt: skip
        arch = platform.split("/")[1]
        if isinstance(base, Image):
            layers, history = base.layers, base.history
        else:
            name, mb = _BASES[base]
            layers = (self.layer(name, mb, arch, sigma=0.25),)
            history = (f"ADD {name}-rootfs.tar /",)
        layers += tuple(self.layer(n, mb, arch) for n, mb in extra)
        history += tuple(f"RUN install {n}" for n, _ in extra)
        cmd = (repo.rsplit("/", 1)[-1],)
        key = repo + "/" + "/".join(n for n, _ in extra)
        return Image(repo, platform, layers, history, self.created(key), cmd, docker_format)


def build(seed: int = 0, scale: float = 1.0) -> Catalogue:
    """The catalogue for ``seed`` and ``scale`` (same inputs, same digests)."""
    if scale <= 0:
        raise ValueError("scale must be > 0")
    b = _Builder(seed, scale)
    tags: list[Tag] = []
    for repo, recipes in _FAMILIES.items():
        for aliases, base, extra in recipes:
            images = tuple(b.image(repo, p, base, extra, False) for p in MULTI_ARCH)
            tags += [Tag(repo, alias, images, index=True) for alias in aliases]
    official = Catalogue(seed, scale, tuple(tags))
    for repo, apps in _APPS.items():
        for aliases, parent, extra in apps:
            prepo, ptag = parent.split(":")
            base_image = official.tag(prepo, ptag).image("linux/amd64")
            image = b.image(repo, "linux/amd64", base_image, extra, True)
            tags += [Tag(repo, alias, (image,)) for alias in aliases]
    return Catalogue(seed, scale, tuple(tags))


def moved(catalogue: Catalogue, repository: str, tag: str, generation: int = 1) -> Tag:
    """``repository:tag`` rebuilt with one new top layer per platform (a new digest)."""
    old = catalogue.tag(repository, tag)
    images = []
    for image in old.images:
        key = f"{catalogue.seed}/bytes/move/{repository}:{tag}/{generation}/{image.architecture}"
        size = max(MIN_LAYER, int(200_000 * catalogue.scale))
        images.append(
            replace(
                image,
                layers=(*image.layers, Layer(key, size)),
                history=(*image.history, f"RUN refresh {generation}"),
                created=image.created + timedelta(days=generation),
            )
        )
    return Tag(repository, tag, tuple(images), index=old.index)


def from_workload(
    images: dict[str, Any], at: datetime, scale: float = 0.01, registry: str = "docker.io"
) -> Catalogue:
    """A catalogue holding the images of a generated workload (``catalogue.json``'s
    ``images``), as they were at ``at``: same names, same layer sharing, sizes x ``scale``.

    Only ``registry`` images are kept (the sandbox has one upstream). Layer bytes are drawn
    from the workload's layer names, so layers shared between images stay shared.
    """
    tags: list[Tag] = []
    for ref, entry in sorted(images.items()):
        if not ref.startswith(registry + "/"):
            continue
        name, _, tag = ref[len(registry) + 1 :].rpartition(":")
        versions = [v for v in entry["versions"] if datetime.fromisoformat(v["valid_from"]) <= at]
        if not name or not versions:
            continue
        version = versions[-1]
        layers = tuple(
            Layer(f"workload/{digest}", max(MIN_LAYER, int(size * scale)))
            for digest, size in version["layers"]
        )
        created = datetime.fromisoformat(version["valid_from"])
        image = Image(
            repository=name,
            platform="linux/amd64",
            layers=layers,
            history=tuple(f"layer {i}" for i in range(len(layers))),
            created=created,
            cmd=(name.rsplit("/", 1)[-1],),
        )
        tags.append(Tag(name, tag, (image,)))
    return Catalogue(seed=0, scale=scale, tags=tuple(tags))
