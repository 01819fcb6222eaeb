"""The sandbox topology: upstream -> front -> central -> {eu, us}, all on 127.0.0.1.

Started top-down (a distribution proxy exits when its parent is down): the ``upstream``
registry, the Docker-Hub-like ``front`` (a separate Python process, see
:mod:`warmer.sandbox.front`), the ``central`` mirror proxying the front, and the regional
``eu`` and ``us`` mirrors proxying central. ``DIR/state.json`` records each process's PID,
URL, log and command-line marker; ``stop`` signals exactly those PIDs (after checking that
the PID still runs our command line, so a reused PID is never signalled). ``DIR/warmer.toml``
is a ready-to-use config for the topology.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

import warmer
from warmer.sandbox.catalogue import Catalogue, Tag, build
from warmer.sandbox.procs import Proc, SandboxError, free_port, spawn, start_registry, wait_ready
from warmer.sandbox.seed import SeedReport, move_tag, run_sync, seed

if TYPE_CHECKING:
    from warmer.sandbox.front import FrontControl

ORDER = ("upstream", "front", "central", "eu", "us")
REGIONS = ("eu", "us")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def answers(url: str, timeout: float = 2.0) -> bool:
    """``GET url/v2/`` answers as a registry does (200, or 401 asking for a token)."""
    try:
        return httpx.get(f"{url}/v2/", timeout=timeout).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def config_toml(directory: Path, urls: dict[str, str]) -> str:
    """The ``warmer.toml`` for a sandbox whose processes answer at ``urls``."""
    out = [
        "# Written by `warmer sandbox up` for the sandbox in this directory.",
        "[database]",
        f'url = "sqlite:///{directory.resolve() / "warmer.db"}"',
        "",
        "[upstreams.dockerhub]",
        f'url = "{urls["front"]}"',
        'aliases = ["docker.io", "registry-1.docker.io", "index.docker.io"]',
        "ratelimit_reserve = 10",
    ]
    tiers = [("central", "dockerhub", "40MB/s")] + [(r, "central", "200MB/s") for r in REGIONS]
    for name, parent, bandwidth in tiers:
        out += [
            "",
            f"[mirrors.{name}]",
            f'url = "{urls[name]}"',
            f'parent = "{parent}"',
            'naming = "plain"',
            'cache_scope = "repository"',
            "fetch_multiplicity = 2",
            'ttl = "168h"',
            f"[mirrors.{name}.link]",
            f'bandwidth = "{bandwidth}"',
            "concurrency = 8",
        ]
    for region in REGIONS:
        out += [
            "",
            f"[regions.{region}]",
            f'mirrors = ["{region}"]',
            'budget = "2GiB"',
            'platforms = ["linux/amd64"]',
            'windows = [{ cron = "0 1 * * *", duration = "3h", timezone = "UTC" }]',
        ]
    return "\n".join(out) + "\n"


@dataclass
class Sandbox:
    """A running (or recorded) sandbox in ``directory``."""

    directory: Path
    seed: int = 0
    scale: float = 1.0
    procs: dict[str, Proc] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    # --- where things are --------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    @property
    def config_path(self) -> Path:
        return self.directory / "warmer.toml"

    def url(self, name: str) -> str:
        return self.procs[name].url

    @property
    def upstream_url(self) -> str:
        return self.url("upstream")

    @property
    def front_url(self) -> str:
        return self.url("front")

    @property
    def central_url(self) -> str:
        return self.url("central")

    @property
    def eu_url(self) -> str:
        return self.url("eu")

    @property
    def us_url(self) -> str:
        return self.url("us")

    @property
    def front(self) -> FrontControl:
        from warmer.sandbox.front import FrontControl  # aiohttp: imported only when used

        return FrontControl(self.front_url)

    @property
    def catalogue(self) -> Catalogue:
        return build(self.seed, self.scale)

    # --- life cycle --------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        directory: Path,
        seed: int = 0,
        scale: float = 1.0,
        latency_ms: float = 0.0,
        bandwidth: str | None = None,
        ratelimit: int = 10_000,
        detach: bool = False,
        auth: str = "token",
    ) -> Sandbox:
        """Start all five processes top-down (fresh registry data) and write the config.

        ``auth="token"`` (the default) has the front ask for Docker Hub's anonymous token
        flow; ``"none"`` lets everything through as a plain registry does.
        """
        directory = directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
        settings = {
            "latency_ms": latency_ms, "bandwidth": bandwidth, "ratelimit": ratelimit, "auth": auth
        }  # fmt: skip
        box = cls(directory, seed, scale, settings=settings)
        try:
            box._start_all(detach)
        except BaseException:
            box.stop()
            raise
        box.save()
        box.config_path.write_text(config_toml(directory, box.urls()))
        return box

    def _start_all(self, detach: bool) -> None:
        for name in ("upstream", "central", *REGIONS):
            shutil.rmtree(self.directory / name / "data", ignore_errors=True)
        self._registry("upstream", None, detach)
        self._start_front(detach)
        self._registry("central", self.front_url, detach)
        for region in REGIONS:
            self._registry(region, self.central_url, detach)

    def _registry(self, name: str, parent: str | None, detach: bool) -> None:
        root = self.directory / name
        self.markers[name] = str(root / "config.yml")
        self.procs[name] = start_registry(name, root, parent_url=parent, detach=detach)

    def _start_front(self, detach: bool) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "warmer.sandbox.front", "--listen", str(port)]
        argv += ["--upstream", self.upstream_url, "--state-dir", str(self.directory)]
        argv += ["--latency-ms", str(self.settings["latency_ms"])]
        argv += ["--ratelimit", str(self.settings["ratelimit"])]
        argv += ["--auth", str(self.settings.get("auth", "none"))]
        if self.settings["bandwidth"]:
            argv += ["--bandwidth", str(self.settings["bandwidth"])]
        root = str(Path(warmer.__file__).resolve().parents[1])
        env = {"PYTHONPATH": root}
        proc = spawn("front", argv, self.directory / "front.log", env=env, detach=detach)
        proc.url = f"http://127.0.0.1:{port}"
        self.procs["front"] = proc
        self.markers["front"] = f"--state-dir {self.directory}"
        wait_ready(proc.url, proc)

    def seed_catalogue(self, concurrency: int = 4, fresh: bool = True) -> SeedReport:
        """Push the catalogue into the upstream (directly, not through the front).

        ``fresh`` (the default) trusts that the upstream is empty, as :meth:`start` leaves it.
        """
        return run_sync(seed(self.upstream_url, self.catalogue, concurrency, fresh))

    def move_tag(self, repository: str, tag: str, generation: int = 1) -> Tag:
        """Push new content under ``repository:tag`` in the upstream; returns the new Tag."""
        return run_sync(move_tag(self.upstream_url, self.catalogue, repository, tag, generation))

    def owned(self, name: str) -> bool:
        """The recorded PID is alive and still runs the command line we started."""
        proc = self.procs[name]
        return proc.alive() and self.markers.get(name, "\0") in _cmdline(proc.pid)

    def stop(self) -> list[dict[str, Any]]:
        """Stop exactly the recorded PIDs, bottom-up; returns what was done to each."""
        done = []
        for name in reversed(ORDER):
            if name not in self.procs:
                continue
            proc = self.procs[name]
            if self.owned(name):
                proc.stop()
                done.append({"name": name, "pid": proc.pid, "stopped": True})
            else:
                proc._reap()
                done.append({"name": name, "pid": proc.pid, "stopped": False})
        if self.state_path.exists():
            self.state_path.unlink()
        return done

    def status(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Each process: ``alive`` (our PID runs our command line), ``answering`` (its
        ``GET /v2/`` answers 200 or 401 within ``timeout``) and ``up`` (both)."""
        rows = []
        for name in ORDER:
            if name not in self.procs:
                continue
            proc = self.procs[name]
            alive = self.owned(name)
            answering = alive and answers(proc.url, timeout)
            rows.append(
                {"name": name, "pid": proc.pid, "url": proc.url, "alive": alive,
                 "answering": answering, "up": alive and answering}
            )  # fmt: skip
        return rows

    def all_alive(self) -> bool:
        return bool(self.procs) and all(self.owned(n) for n in self.procs)

    def urls(self) -> dict[str, str]:
        return {n: p.url for n, p in self.procs.items()}

    # --- state file --------------------------------------------------------------------

    def save(self) -> None:
        state = {
            "seed": self.seed,
            "scale": self.scale,
            "settings": self.settings,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": str(self.config_path),
            "processes": {
                n: {"pid": p.pid, "url": p.url, "log": str(p.log), "marker": self.markers[n]}
                for n, p in self.procs.items()
            },
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Sandbox | None:
        """The sandbox recorded in ``directory/state.json``; None when there is none."""
        directory = directory.resolve()
        path = directory / "state.json"
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
            procs = {
                n: Proc(n, int(p["pid"]), str(p["url"]), Path(p["log"]))
                for n, p in state["processes"].items()
            }
            markers = {n: str(p["marker"]) for n, p in state["processes"].items()}
            return cls(
                directory, int(state["seed"]), float(state["scale"]), procs, markers,
                dict(state.get("settings", {})),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"{path}: unreadable sandbox state ({exc})") from exc
