"""Pre-pull images onto CI nodes through their engines' Docker API (the Docker SDK).

Only a daemon can put an image into a node's local store, so this is the one place the
Docker SDK is used. The SDK is synchronous: each node gets a worker thread, and within a
node images are pulled one at a time by default (``per_node``), so a node's disk and its
mirror link are not swamped. Each engine pulls through whatever mirror it is configured
with; nothing here talks to a registry directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import docker
import docker.errors
from docker.models.images import Image

from warmer.oci.reference import Reference

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 600.0


class PullFailed(Exception):
    """The engine reported an error while pulling (it arrives inside the progress stream)."""


@dataclass
class Failure:
    image: str
    error: str


@dataclass
class NodeReport:
    node: str
    pulled: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    error: str | None = None  # the node itself could not be used

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageState:
    image: str
    present: bool
    id: str | None = None
    repo_digests: list[str] = field(default_factory=list)


@dataclass
class NodeStatus:
    node: str
    images: list[ImageState] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def engine_name(ref: Reference) -> str:
    """The name to give an engine: fully qualified, so no search list is consulted."""
    return f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"


def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> docker.DockerClient:
    """A client for the engine at ``url`` (unix://, tcp://, ssh://), checked with a ping."""
    client = docker.DockerClient(base_url=url, timeout=int(timeout))
    try:
        client.ping()
    except Exception:
        client.close()
        raise
    return client


def local_image(client: docker.DockerClient, ref: Reference) -> Image | None:
    try:
        return client.images.get(engine_name(ref))
    except docker.errors.ImageNotFound:
        return None


def pull(client: docker.DockerClient, ref: Reference) -> bool:
    """Pull ``ref``; True when the engine got something new, False when it was up to date."""
    before = local_image(client, ref)
    if before is not None and ref.digest:
        return False  # content-addressed: what is there is what was asked for
    stream = client.api.pull(ref.name, tag=ref.digest or ref.tag, stream=True, decode=True)
    for event in stream:
        if isinstance(event, dict) and event.get("error"):
            raise PullFailed(str(event.get("error")))
    after = local_image(client, ref)
    if after is None:
        raise PullFailed(f"the engine reported success but does not hold {engine_name(ref)}")
    return before is None or before.id != after.id


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def prepull_node(
    url: str,
    refs: Sequence[Reference],
    per_node: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    on_result: Callable[[str, str, str], None] | None = None,
) -> NodeReport:
    """Pull ``refs`` into the engine at ``url``; failures are recorded, the rest go on."""
    report = NodeReport(url)
    try:
        client = connect(url, timeout)
    except Exception as exc:  # unreachable engine, bad URL: recorded for this node only
        report.error = _describe(exc)
        return report

    def one(ref: Reference) -> None:
        name = engine_name(ref)
        try:
            outcome = "pulled" if pull(client, ref) else "present"
        except Exception as exc:  # a pull error of one image must not stop the others
            report.failed.append(Failure(name, _describe(exc)))
            outcome = "failed"
        else:
            (report.pulled if outcome == "pulled" else report.present).append(name)
        log.info("node %s: %s %s", url, outcome, name)
        if on_result is not None:
            on_result(url, name, outcome)

    try:
        with ThreadPoolExecutor(max_workers=per_node) as pool:
            list(pool.map(one, refs))
    finally:
        client.close()
    return report


def prepull(
    urls: Sequence[str],
    refs: Sequence[Reference],
    per_node: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    on_result: Callable[[str, str, str], None] | None = None,
) -> list[NodeReport]:
    """All nodes in parallel, ``per_node`` pulls at a time on each; reports in node order."""
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return list(pool.map(lambda u: prepull_node(u, refs, per_node, timeout, on_result), urls))


def node_status(url: str, refs: Sequence[Reference], timeout: float = 60.0) -> NodeStatus:
    status = NodeStatus(url)
    try:
        client = connect(url, timeout)
    except Exception as exc:  # recorded for this node only
        status.error = _describe(exc)
        return status
    try:
        for ref in refs:
            image = local_image(client, ref)
            if image is None:
                status.images.append(ImageState(engine_name(ref), False))
            else:
                digests = [str(d) for d in image.attrs.get("RepoDigests") or []]
                status.images.append(ImageState(engine_name(ref), True, image.id, digests))
    finally:
        client.close()
    return status


def status(urls: Sequence[str], refs: Sequence[Reference]) -> list[NodeStatus]:
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return list(pool.map(lambda u: node_status(u, refs), urls))
