"""A throwaway PostgreSQL server on 127.0.0.1 (for tests and the sandbox), stopped by PID.

``initdb`` refuses to run as root, so when we are root the server runs as the ``postgres``
system user that Debian's package creates. Trust authentication on loopback only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import time
from pathlib import Path

from warmer.sandbox.procs import Proc, SandboxError, free_port, spawn


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise SandboxError(f"{name} not found: install the Debian package 'postgresql'")
    return candidates[-1]


def _as_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def start_postgres(root: Path, port: int | None = None, detach: bool = False) -> Proc:
    """initdb into ``root/data`` and start a server; ``Proc.url`` is a SQLAlchemy-ready URL."""
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            _as_user([pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    port = port or free_port()
    argv = _as_user(
        [pg_bin("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(root), "-c", "fsync=off", "-c", "max_connections=100"]
    )  # fmt: skip
    proc = spawn("postgres", argv, root / "postgres.log", detach=detach)
    proc.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    _wait(proc, port)
    return proc


def _wait(proc: Proc, port: int, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            tail = proc.log.read_text(errors="replace")[-1500:] if proc.log.exists() else ""
            raise SandboxError(f"postgres exited during start-up; log tail:\n{tail}")
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=1
            ):
                return
        except psycopg.OperationalError:
            time.sleep(0.1)
    proc.stop()
    raise SandboxError(f"postgres on port {port} not ready after {timeout:.0f}s")


def create_database(port_url: str, name: str) -> str:
    """A fresh database on the server at ``port_url``; returns its URL."""
    import psycopg

    dsn = port_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return port_url.rsplit("/", 1)[0] + f"/{name}"
