"""Image references, parsed and normalised exactly as Docker does.

The grammar follows the distribution project's reference package (``reference/regexp.go``
and ``normalize.go``): a registry host is recognised in the first path component when it
contains ``.`` or ``:``, is ``localhost``, or has an upper-case letter; ``docker.io``
repositories with one component live under ``library/``; ``index.docker.io`` is
``docker.io``. It is written here rather than taken from a package because no maintained
Python package implements the normalisation rules (only the raw grammar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"

# Used with ``fullmatch`` only: ``$`` would let a trailing newline through.
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_DIGEST_RE = re.compile(_DIGEST, re.ASCII)
_ANCHORED_HEX64 = re.compile(r"[a-f0-9]{64}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")
_SHA512_HEX = re.compile(r"[a-f0-9]{128}")


def is_tag(text: str) -> bool:
    """``text`` is a tag of the reference grammar."""
    return _TAG_RE.fullmatch(text) is not None


def is_repository_path(text: str) -> bool:
    """``text`` is a repository path of the reference grammar (``library/ubuntu``)."""
    return _PATH_RE.fullmatch(text) is not None


class InvalidReference(ValueError):
    """Raised for text that is not a valid image reference; the message says why."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid reference {text!r}: {why}")
        self.text = text
        self.why = why


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. ``str()`` is the canonical fully-qualified form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``: the fully-qualified name without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short form Docker prints: ``ubuntu:22.04``, ``user/app``, ``ghcr.io/o/r:t``."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository
            if name.startswith(OFFICIAL_PREFIX) and name.count("/") == 1:
                name = name[len(OFFICIAL_PREFIX) :]
        return name + self._suffix()

    @property
    def reference(self) -> str:
        """What to ask a registry for: the digest when there is one, else the tag."""
        if self.digest:
            return self.digest
        assert self.tag is not None
        return self.tag

    def with_digest(self, digest: str) -> Reference:
        """The same name and tag, pinned to ``digest``."""
        _check_digest(str(self), digest)
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(tag, "invalid tag")
        return Reference(self.registry, self.repository, tag, None)

    def _suffix(self) -> str:
        out = ""
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self.name + self._suffix()


def _check_digest(text: str, digest: str) -> None:
    algorithm, colon, hexpart = digest.partition(":")
    if colon and algorithm == "sha256" and not _SHA256_HEX.fullmatch(hexpart):
        raise InvalidReference(text, "a sha256 digest must be 64 lower-case hex characters")
    if colon and algorithm == "sha512" and not _SHA512_HEX.fullmatch(hexpart):
        raise InvalidReference(text, "a sha512 digest must be 128 lower-case hex characters")
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidReference(text, f"invalid digest {digest!r} (expected algorithm:hex)")


def _split_domain(remote: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: decide whether the first component is a host."""
    first, slash, rest = remote.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, path = DEFAULT_REGISTRY, remote
    else:
        domain, path = first, rest
    if domain == LEGACY_REGISTRY:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(text: str) -> Reference:
    """Parse ``text`` as Docker does (``ParseNormalizedNamed`` plus the default tag).

    ``tag`` is ``latest`` when neither a tag nor a digest is given.
    """
    if not isinstance(text, str):
        raise InvalidReference(repr(text), "not a string")
    if text == "":
        raise InvalidReference(text, "empty reference")
    if text != text.strip():
        raise InvalidReference(text, "leading or trailing whitespace")
    if _ANCHORED_HEX64.fullmatch(text):
        raise InvalidReference(
            text, "a bare 64-character hex string is an image ID, not a repository name"
        )

    remote, at, digest = text.partition("@")
    if at and not digest:
        raise InvalidReference(text, "empty digest after '@'")
    tag: str | None = None
    # A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
    last_slash = remote.rfind("/")
    colon = remote.rfind(":")
    if colon > last_slash:
        remote, tag = remote[:colon], remote[colon + 1 :]
        if not tag:
            raise InvalidReference(text, "empty tag after ':'")
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(
                text, f"invalid tag {tag!r} (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
            )
    if not remote:
        raise InvalidReference(text, "missing repository name")

    domain, path = _split_domain(remote)
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidReference(text, f"invalid registry host {domain!r}")
    if not path:
        raise InvalidReference(text, "missing repository path after the registry host")
    if path.lower() != path:
        raise InvalidReference(text, f"repository name {path!r} must be lower-case")
    if not _PATH_RE.fullmatch(path):
        raise InvalidReference(
            text,
            f"invalid repository name {path!r} (components are lower-case letters and digits "
            "separated by '.', '_', '__' or '-')",
        )
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            text, f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    if at:
        _check_digest(text, digest)
    if tag is None and not at:
        tag = "latest"
    return Reference(domain, path, tag, digest or None)


def try_parse(text: str) -> Reference | None:
    """``parse`` that answers ``None`` instead of raising (for scanners of untrusted text)."""
    try:
        return parse(text)
    except InvalidReference:
        return None
