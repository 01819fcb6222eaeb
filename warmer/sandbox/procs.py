"""Start and stop real CNCF distribution (``docker-registry``) processes on 127.0.0.1.

Each process is started in its own session, its PID recorded, and stopped by that PID
only (SIGTERM, then SIGKILL after a grace period). Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REGISTRY_BINARY = "docker-registry"


class SandboxError(RuntimeError):
    """A sandbox process could not be started or did not become ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def registry_binary() -> str:
    path = shutil.which(REGISTRY_BINARY) or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )
    if path is None:
        raise SandboxError(
            "docker-registry not found: install the Debian package 'docker-registry' "
            "(CNCF distribution 2.8)"
        )
    return path


@dataclass
class Proc:
    """A process the sandbox started: its name, PID, URL and log file."""

    name: str
    pid: int
    url: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie child of another process still answers kill(0); look at its state.
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the recorded PID, SIGKILL after ``grace`` seconds."""
        if not self.alive():
            self._reap()
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self._reap()
            if not self.alive():
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap(block=True)

    def _reap(self, block: bool = False) -> None:
        if self.popen is not None:
            if block:
                self.popen.wait(timeout=10)
            else:
                self.popen.poll()


def registry_config(root: Path, port: int, parent_url: str | None, extra_config: str = "") -> str:
    """distribution 2.8 YAML config: filesystem storage, delete enabled, optional proxy.

    ``extra_config`` is appended as is (top-level YAML keys, e.g. an ``auth:`` section).
    """
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'data'}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  headers:",
        "    X-Content-Type-Options: [nosniff]",
    ]
    if parent_url:
        lines += ["proxy:", f"  remoteurl: {parent_url}"]
    text = "\n".join(lines) + "\n"
    if extra_config:
        text += extra_config.rstrip("\n") + "\n"
    return text


def wait_ready(url: str, proc: Proc, timeout: float = 20.0) -> None:
    """Poll ``GET /v2/`` until it answers; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            tail = proc.log.read_text(errors="replace")[-2000:] if proc.log.exists() else ""
            raise SandboxError(f"{proc.name} exited during start-up; log tail:\n{tail}")
        try:
            r = httpx.get(f"{url}/v2/", timeout=1.0)
            if r.status_code in (200, 401):
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.05)
    proc.stop()
    raise SandboxError(f"{proc.name} at {url} not ready after {timeout:.0f}s ({last})")


def spawn(
    name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, detach: bool = False
) -> Proc:
    """Start ``argv`` in a new session with output to ``log``; the caller waits for readiness."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return Proc(name, popen.pid, "", log, None if detach else popen)


def start_registry(
    name: str,
    root: Path,
    parent_url: str | None = None,
    port: int | None = None,
    detach: bool = False,
    extra_config: str = "",
) -> Proc:
    """Start a distribution registry (a proxy of ``parent_url`` when given) and wait for it."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = root / "config.yml"
    config.write_text(registry_config(root, port, parent_url, extra_config))
    argv = [registry_binary(), "serve", str(config)]
    proc = spawn(name, argv, root / "registry.log", detach=detach)
    proc.url = f"http://127.0.0.1:{port}"
    wait_ready(proc.url, proc)
    return proc
