"""Shared fixtures: real CNCF distribution registries on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
from hypothesis import settings

from warmer.sandbox.procs import Proc, SandboxError, spawn, start_registry

RegistryFactory = Callable[..., Proc]

# Property tests search with a fixed seed in CI, so a run is reproducible: a failure found
# there fails every run until fixed. HYPOTHESIS_PROFILE=explore searches anew each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """Start ``docker-registry`` processes: ``registry_factory("name", parent_url=None)``."""
    started: list[Proc] = []

    def start(
        name: str = "registry", parent_url: str | None = None, extra_config: str = ""
    ) -> Proc:
        root: Path = tmp_path_factory.mktemp(name)
        proc = start_registry(name, root, parent_url=parent_url, extra_config=extra_config)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="session")
def plain_registry(registry_factory: RegistryFactory) -> Proc:
    """One writable registry for the whole session (tests use distinct repository names)."""
    return registry_factory("plain")


# --- a real Docker-API engine: podman's API service on a unix socket ---------------------

PODMAN_START_TIMEOUT = 30.0
PodmanFactory = Callable[[str], "PodmanEngine"]


@dataclass
class PodmanEngine:
    """A ``podman system service`` whose docker.io pulls go to ``mirror`` (plain HTTP)."""

    url: str  # unix:///.../podman.sock, as the Docker SDK takes it
    mirror: str  # host:port that docker.io names resolve to
    proc: Proc


def _podman_argv(root: Path, socket_path: Path) -> list[str]:
    # Running as root in a container without systemd: vfs storage (no overlay mounts),
    # cgroupfs and file events (no systemd/journald); everything under this test's root.
    return [
        shutil.which("podman") or "podman",
        "--root", str(root / "storage"),
        "--runroot", str(root / "run"),
        "--tmpdir", str(root / "tmp"),
        "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "file",
        "system", "service", "--time=0", f"unix://{socket_path}",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def podman_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanFactory]:
    """``podman_factory("127.0.0.1:PORT")``: an engine that pulls docker.io/* from that mirror.

    ``registries.conf`` maps the ``docker.io`` prefix to the mirror (insecure, plain HTTP),
    so no pull ever leaves loopback. Each engine has its own storage and is stopped by PID.
    """
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (Debian package 'podman'); the nodes tests need it")
    started: list[PodmanEngine] = []

    def start(mirror: str) -> PodmanEngine:
        root = tmp_path_factory.mktemp("podman")
        for sub in ("storage", "run", "tmp"):
            (root / sub).mkdir()
        (root / "registries.conf").write_text(
            'unqualified-search-registries = ["docker.io"]\n\n'
            "[[registry]]\n"
            'prefix = "docker.io"\n'
            f'location = "{mirror}"\n'
            "insecure = true\n"
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{root / "run"}"\n'
            f'graphroot = "{root / "storage"}"\n'
        )
        (root / "containers.conf").write_text('[engine]\nevents_logger = "file"\n')
        socket_path = root / "podman.sock"
        env = {
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "XDG_RUNTIME_DIR": str(root / "run"),
        }
        proc = spawn("podman", _podman_argv(root, socket_path), root / "podman.log", env=env)
        url = f"unix://{socket_path}"
        proc.url = url
        started.append(PodmanEngine(url, mirror, proc))
        deadline = time.monotonic() + PODMAN_START_TIMEOUT
        while time.monotonic() < deadline:
            if not proc.alive():
                raise SandboxError(
                    f"podman service exited: {proc.log.read_text(errors='replace')[-2000:]}"
                )
            if socket_path.exists():
                try:
                    client = docker.DockerClient(base_url=url, timeout=5)
                    try:
                        client.ping()
                        return started[-1]
                    finally:
                        client.close()
                except docker.errors.DockerException:
                    pass
            time.sleep(0.1)
        proc.stop()
        raise SandboxError(f"podman service not ready after {PODMAN_START_TIMEOUT:.0f}s")

    yield start
    for engine in reversed(started):
        engine.proc.stop()


from warmer.sandbox.topology import Sandbox  # noqa: E402 (kept next to its fixture)

SANDBOX_SEED = 20240601
SANDBOX_SCALE = 0.01  # about 2 MB of layers: fast to seed, same shape as the real thing


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The whole topology (upstream -> front -> central -> eu/us), seeded, stats reset.

    Attributes: ``upstream_url``, ``front_url``, ``central_url``, ``eu_url``, ``us_url``,
    ``front`` (a FrontControl: ``stats()``, ``reset()``, ``configure(...)``, ``add_fault(...)``,
    ``clear_faults()``), ``catalogue``, ``config_path``. Shared by the session: a test that
    changes the front's config or faults restores them; ``move_tag`` changes what every later
    test sees, so prefer a registry of your own for that.
    """
    box = Sandbox.start(tmp_path_factory.mktemp("sandbox"), seed=SANDBOX_SEED, scale=SANDBOX_SCALE)
    try:
        box.seed_catalogue()
        box.front.reset()
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A real PostgreSQL server on 127.0.0.1 for the session (stopped by PID)."""
    import tempfile

    from warmer.sandbox.postgres import start_postgres

    # Not under pytest's private (0700) temp root: the server may run as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="warmer-pg-"))
    proc = start_postgres(root)
    yield proc
    proc.stop(grace=10)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: Proc, request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's PostgreSQL server."""
    import re

    from warmer.sandbox.postgres import create_database

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    return create_database(postgres_server.url, name)
