"""Shared fixtures: real CNCF distribution registries on 127.0.0.1, stopped by PID."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from warmer.sandbox.procs import Proc, start_registry

RegistryFactory = Callable[..., Proc]


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
