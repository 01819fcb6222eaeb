"""The generator's image catalogue: tags, their digests over time, and layer composition.

Layers are what a mirror stores, so the backtest prices a warm set in distinct layer bytes
(a Debian base layer shared by ``python`` and ``node`` is counted once). Tags move: official
images are rebuilt on a schedule and the same tag points at a new manifest whose top layers
are new while the base layers usually stay. The catalogue keeps every version of every tag
(``valid_from``, digest, layers) and is written as ``catalogue.json`` beside generated logs,
which is also what ``warmer backtest`` reads for image sizes.

Sizes are compressed layer sizes of the same order as the public images of those names
(a full ``python`` image is about 1 GB in layers on a Debian base, a ``-slim`` one about
50 MB, ``alpine`` 3-4 MB).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MB = 1_000_000
Layer = tuple[str, int]

# Shared base layers: name -> size in MB.
_BASES: dict[str, float] = {
    "debian-bookworm": 49,
    "buildpack-curl": 24,
    "buildpack-scm": 64,
    "buildpack-full": 211,
    "ubuntu-jammy": 30,
    "ubuntu-noble": 29,
    "alpine-3.19": 3.4,
    "alpine-3.20": 3.6,
    "debian-slim": 29,
    "temurin-base": 45,
}

# (reference, base layers, own layer sizes in MB, kind). Kinds drive who uses an image:
# "lang" job images, "service" containers, "tool" steps, "base" Dockerfile bases, "deploy".
IMAGES: list[tuple[str, tuple[str, ...], tuple[float, ...], str]] = [
    (
        "python:3.11",
        ("debian-bookworm", "buildpack-curl", "buildpack-scm", "buildpack-full"),
        (6, 21, 3),
        "lang",
    ),
    (
        "python:3.12",
        ("debian-bookworm", "buildpack-curl", "buildpack-scm", "buildpack-full"),
        (6, 22, 3),
        "lang",
    ),
    ("python:3.11-slim", ("debian-slim",), (3.5, 12, 3), "base"),
    ("python:3.12-slim", ("debian-slim",), (3.5, 13, 3), "base"),
    (
        "node:18",
        ("debian-bookworm", "buildpack-curl", "buildpack-scm", "buildpack-full"),
        (4, 40, 2),
        "lang",
    ),
    (
        "node:20",
        ("debian-bookworm", "buildpack-curl", "buildpack-scm", "buildpack-full"),
        (4, 42, 2),
        "lang",
    ),
    ("node:20-alpine", ("alpine-3.19",), (40, 2.4), "base"),
    ("golang:1.21", ("debian-bookworm", "buildpack-curl", "buildpack-scm"), (78, 66), "lang"),
    ("golang:1.22", ("debian-bookworm", "buildpack-curl", "buildpack-scm"), (80, 68), "lang"),
    ("eclipse-temurin:17", ("ubuntu-jammy", "temurin-base"), (145,), "lang"),
    ("eclipse-temurin:21", ("ubuntu-jammy", "temurin-base"), (158,), "lang"),
    ("maven:3.9-eclipse-temurin-17", ("ubuntu-jammy", "temurin-base"), (145, 9, 1), "lang"),
    ("gradle:8-jdk17", ("ubuntu-jammy", "temurin-base"), (145, 130), "lang"),
    ("rust:1.77", ("debian-bookworm", "buildpack-curl", "buildpack-scm"), (260,), "lang"),
    (
        "ruby:3.3",
        ("debian-bookworm", "buildpack-curl", "buildpack-scm", "buildpack-full"),
        (12, 38),
        "lang",
    ),
    ("alpine:3.19", ("alpine-3.19",), (), "base"),
    ("alpine:3.20", ("alpine-3.20",), (), "base"),
    ("ubuntu:22.04", ("ubuntu-jammy",), (), "base"),
    ("ubuntu:24.04", ("ubuntu-noble",), (), "base"),
    ("debian:bookworm-slim", ("debian-slim",), (), "base"),
    ("nginx:1.25", ("debian-slim",), (40, 0.1, 0.1), "base"),
    ("nginx:1.27", ("debian-slim",), (42, 0.1, 0.1), "base"),
    ("postgres:15", ("debian-slim",), (4, 8, 1.3, 90), "service"),
    ("postgres:16", ("debian-slim",), (4, 8, 1.3, 95), "service"),
    ("redis:7", ("debian-slim",), (1, 14), "service"),
    ("mysql:8.0", ("debian-slim",), (1, 55, 100), "service"),
    ("mongo:7", ("ubuntu-jammy",), (70, 150), "service"),
    ("rabbitmq:3-management", ("ubuntu-jammy",), (50, 30, 12), "service"),
    ("docker:24-dind", ("alpine-3.19",), (20, 17, 26), "service"),
    ("docker:26-dind", ("alpine-3.20",), (21, 18, 27), "service"),
    ("localstack/localstack:3.3", ("debian-slim",), (90, 250), "service"),
    (
        "docker.elastic.co/elasticsearch/elasticsearch:8.13.0",
        ("ubuntu-jammy",),
        (380, 20),
        "service",
    ),
    ("gcr.io/kaniko-project/executor:v1.22.0", (), (30,), "tool"),
    ("aquasec/trivy:0.50.1", ("alpine-3.19",), (40,), "tool"),
    ("hashicorp/terraform:1.7", ("alpine-3.19",), (25, 3), "tool"),
    ("bitnami/kubectl:1.29", ("debian-slim",), (25, 12), "tool"),
    ("sonarsource/sonar-scanner-cli:5", ("alpine-3.19",), (55, 120), "tool"),
    ("cypress/included:13.7.0", ("debian-bookworm",), (400, 280), "tool"),
    ("mcr.microsoft.com/playwright:v1.43.0-jammy", ("ubuntu-jammy",), (350, 320), "tool"),
    ("quay.io/prometheus/prometheus:v2.51.0", (), (1, 45, 40), "deploy"),
    ("quay.io/keycloak/keycloak:24.0", ("ubuntu-jammy",), (180,), "deploy"),
    ("ghcr.io/acme/payments:latest", ("debian-slim",), (13, 60, 5), "deploy"),
    ("ghcr.io/acme/frontend:latest", ("alpine-3.19",), (40, 12), "deploy"),
    ("ghcr.io/acme/search:latest", ("ubuntu-jammy",), (160, 20), "deploy"),
]

# Migrations to a newer tag of the same repository: (old, new).
MIGRATIONS: list[tuple[str, str]] = [
    ("python:3.11", "python:3.12"),
    ("python:3.11-slim", "python:3.12-slim"),
    ("node:18", "node:20"),
    ("golang:1.21", "golang:1.22"),
    ("postgres:15", "postgres:16"),
    ("eclipse-temurin:17", "eclipse-temurin:21"),
    ("alpine:3.19", "alpine:3.20"),
    ("nginx:1.25", "nginx:1.27"),
    ("docker:24-dind", "docker:26-dind"),
]


def layer_digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _mb(size: float, salt: str) -> int:
    # Spread sizes a little so no two layers are byte-identical in size.
    jitter = int(hashlib.sha256(salt.encode()).hexdigest()[:6], 16) % 100_000
    return int(size * MB) + jitter


@dataclass
class Version:
    valid_from: datetime
    digest: str
    layers: list[Layer]


@dataclass
class Catalogue:
    """Every tag's versions, oldest first; canonical ``name:tag`` keys."""

    versions: dict[str, list[Version]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    _by_digest: dict[str, list[Layer]] = field(default_factory=dict, repr=False)

    def add(self, ref: str, version: Version) -> None:
        self.versions.setdefault(ref, []).append(version)
        self._by_digest[version.digest] = version.layers

    def version_at(self, ref: str, at: datetime) -> Version | None:
        versions = self.versions.get(ref)
        if not versions:
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        i = bisect.bisect_right([v.valid_from for v in versions], at) - 1
        return versions[max(i, 0)]

    def layers(self, image: str, tag: str, digest: str, at: datetime) -> list[Layer] | None:
        """Layers of ``digest`` if known, else of ``image:tag`` as resolved at ``at``."""
        if digest and digest in self._by_digest:
            return self._by_digest[digest]
        version = self.version_at(f"{image}:{tag}", at) if tag else None
        return version.layers if version else None

    def to_json(self) -> dict[str, Any]:
        return {
            "images": {
                ref: {
                    "kind": self.kinds.get(ref, ""),
                    "versions": [
                        {
                            "valid_from": v.valid_from.isoformat(),
                            "digest": v.digest,
                            "layers": v.layers,
                        }
                        for v in vs
                    ],
                }
                for ref, vs in self.versions.items()
            }
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalogue:
        cat = cls()
        for ref, entry in data["images"].items():
            cat.kinds[ref] = entry.get("kind", "")
            for v in entry["versions"]:
                layers = [(str(d), int(s)) for d, s in v["layers"]]
                when = datetime.fromisoformat(v["valid_from"])
                when = when if when.tzinfo else when.replace(tzinfo=UTC)
                cat.add(ref, Version(when, v["digest"], layers))
        return cat

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        return cls.from_json(json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))


def canonical(short: str) -> str:
    """``python:3.12`` -> ``docker.io/library/python:3.12`` (via the shared parser)."""
    from warmer.oci.reference import parse

    return str(parse(short))


def build(start: datetime, weeks: int, moving: Iterable[str], move_weekday: int = 1) -> Catalogue:
    """A catalogue whose ``moving`` tags are rebuilt every week on ``move_weekday``.

    A rebuild replaces the image's own top layers (new digests) and keeps its base layers,
    as an official-image rebuild for a security patch does.
    """
    moving_set = {canonical(r) for r in moving}
    cat = Catalogue()
    base_layers = {
        name: (layer_digest("base", name), _mb(size, name)) for name, size in _BASES.items()
    }
    from datetime import timedelta

    for short, bases, own, kind in IMAGES:
        ref = canonical(short)
        cat.kinds[ref] = kind
        builds = [start - timedelta(days=30)]
        if ref in moving_set:
            first = start + timedelta(days=(move_weekday - start.weekday()) % 7, hours=13)
            builds += [first + timedelta(weeks=w) for w in range(weeks + 1)]
        for n, when in enumerate(builds):
            own_layers = [
                (layer_digest(ref, n, i), _mb(size, f"{ref}{n}{i}")) for i, size in enumerate(own)
            ]
            if not own_layers:  # a bare base image: its base layer is the image
                own_layers = [(layer_digest(ref, n, "cfg"), 2_000)]
            layers = [base_layers[b] for b in bases] + own_layers
            cat.add(ref, Version(when, layer_digest("manifest", ref, n), layers))
    return cat
