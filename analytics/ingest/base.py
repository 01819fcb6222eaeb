"""What every log parser shares: the hit it emits, the base class, small text helpers.

A parser declares ``keywords`` (bytes). The driver finds lines containing one of them
with ``bytes.find`` (memchr speed) and feeds only those lines, decoded, to ``feed``; a
parser never sees the bulk of a CI log. Regexes run only on those lines.

A parser counts in ``known`` every line it understood (a line of a pull it folds into an
event, or one it knows to be about an image but deliberately not a use): the driver's
coverage scan (``analytics.ingest.unused``) reports image-looking lines no parser knew.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from analytics.ingest.reader import ReadStats


@dataclass(slots=True)
class Hit:
    """An image use as the parser saw it, before normalisation and region rules."""

    reference: str
    timestamp: datetime | None = None  # None: the file's default time
    digest: str | None = None
    pulled: bool | None = None
    pipeline: str | None = None
    runner: str | None = None
    mirror: str | None = None
    source: str | None = None  # None: the parser's own name


Emit = Callable[[Hit], None]


class LineParser:
    """Base class: ``feed`` one selected line (text, no newline); ``finish`` at end of file."""

    name = ""
    keywords: tuple[bytes, ...] = ()
    scan_unused = True  # False: image-looking lines of this format are not client output

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        self.emit = emit
        self.stats = stats
        self.default_time = default_time
        self.known = 0  # lines understood (see the module docstring)

    def recognized(self) -> int:
        """Lines understood so far (parsers that delegate add their helper's count)."""
        return self.known

    def feed(self, line: str) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush state held across lines (a pull whose outcome was never printed)."""


# CSI (colours), OSC (titles, links) and APC (Buildkite's ``ESC _bk;t=MS BEL`` times) sequences.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[\]_][^\x07\x1b]*(?:\x07|\x1b\\)")


def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line) if "\x1b" in line else line


def parse_iso(text: str) -> datetime | None:
    """An ISO 8601 timestamp as aware UTC; naive means UTC; None when it is not one."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def from_unix(seconds: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(seconds), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


# Options of `docker|podman|nerdctl pull` that take a separate value (the rest are flags).
_PULL_VALUE_OPTS = frozenset(
    {
        "--platform",
        "--creds",
        "--authfile",
        "--cert-dir",
        "--arch",
        "--os",
        "--variant",
        "--retry",
        "--retry-delay",
        "--decryption-key",
        "--policy",
        "--signature-policy",
        "--namespace",
        "-n",
        "--user",
        "-u",
        "--snapshotter",
    }
)


def split_digest(ref: str) -> tuple[str, str | None]:
    """``name:tag@digest`` as (``name:tag``, digest); a reference by digest alone is kept
    whole (it names nothing else) with its digest; no digest gives (ref, None)."""
    name, at, digest = ref.partition("@")
    if not at:
        return ref, None
    if ":" in name.rsplit("/", 1)[-1]:
        return name, digest or None
    return ref, digest or None


def repository(ref: str) -> str:
    """``ref`` without its digest and tag (``host:5000/a/b:1@sha256:...`` -> ``host:5000/a/b``)."""
    name = ref.partition("@")[0]
    head, sep, tail = name.rpartition(":")
    return head if sep and "/" not in tail else name


def plain_ref(ref: str) -> str:
    """A Docker Hub reference as CircleCI and the docker client may each print it."""
    for prefix in ("docker.io/", "library/"):
        ref = ref.removeprefix(prefix)
    return ref if "@" in ref or ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


def pull_target(args: str) -> str | None:
    """The image operand of a pull command line, or None (an unexpanded variable, none)."""
    return _operand(args, _PULL_VALUE_OPTS)


# Options of `docker|podman|nerdctl run` that take a separate value (the rest are flags;
# `--opt=value` is one token either way). After the docker CLI's reference for `run`.
_RUN_VALUE_OPTS = frozenset(
    {
        *("-a", "--attach", "-c", "--cpu-shares", "-e", "--env", "-h", "--hostname"),
        *("-l", "--label", "-m", "--memory", "-p", "--publish", "-u", "--user"),
        *("-v", "--volume", "-w", "--workdir", "--add-host", "--annotation"),
        *("--blkio-weight", "--blkio-weight-device", "--cap-add", "--cap-drop"),
        *("--cgroup-parent", "--cgroupns", "--cidfile", "--cpu-period", "--cpu-quota"),
        *("--cpu-rt-period", "--cpu-rt-runtime", "--cpus", "--cpuset-cpus", "--cpuset-mems"),
        *("--detach-keys", "--device", "--device-cgroup-rule", "--device-read-bps"),
        *("--device-read-iops", "--device-write-bps", "--device-write-iops", "--dns"),
        *("--dns-option", "--dns-search", "--domainname", "--entrypoint", "--env-file"),
        *("--expose", "--gpus", "--group-add", "--health-cmd", "--health-interval"),
        *("--health-retries", "--health-start-interval", "--health-start-period"),
        *("--health-timeout", "--ip", "--ip6", "--ipc", "--isolation", "--kernel-memory"),
        *("--label-file", "--link", "--link-local-ip", "--log-driver", "--log-opt"),
        *("--mac-address", "--memory-reservation", "--memory-swap", "--memory-swappiness"),
        *("--mount", "--name", "--network", "--net", "--network-alias", "--oom-score-adj"),
        *("--pid", "--pids-limit", "--platform", "--pull", "--restart", "--runtime"),
        *("--security-opt", "--shm-size", "--stop-signal", "--stop-timeout"),
        *("--storage-opt", "--sysctl", "--tmpfs", "--ulimit", "--userns", "--uts"),
        *("--volume-driver", "--volumes-from"),
    }
)


def run_target(args: str) -> str | None:
    """The image operand of a ``run`` command line (what follows ``run``), or None: an
    unexpanded variable, an option this table does not know the arity of, nothing."""
    return _operand(args, _RUN_VALUE_OPTS, _RUN_FLAGS, stops=("\\",))


def _operand(
    args: str,
    value_opts: frozenset[str],
    long_flags: frozenset[str] | None = None,
    stops: tuple[str, ...] = (),
) -> str | None:
    """The first operand after a command's options: those in ``value_opts`` take the next
    token, other ``-`` tokens none. With ``long_flags``, a ``--long`` option in neither set
    (and without ``=value``) gives None: better no use than a wrong image. None too for an
    unexpanded variable, a shell operator or one of ``stops``."""
    tokens = args.split()
    i = 0
    while i < len(tokens):
        tok = tokens[i].strip("'\"")
        if tok in value_opts:
            i += 2
            continue
        if (
            long_flags is not None
            and tok.startswith("--")
            and "=" not in tok
            and tok not in long_flags
        ):
            return None
        if tok.startswith("-"):
            i += 1
            continue
        if "$" in tok or not tok or tok in {"&&", "||", ";", "|", *stops}:
            return None
        return tok.rstrip(";")
    return None


# Long flags of `run` (no value); short flags may be combined (`-it`, `-dit`).
_RUN_FLAGS = frozenset(
    {
        *("--detach", "--interactive", "--tty", "--rm", "--init", "--privileged"),
        *("--publish-all", "--read-only", "--sig-proxy", "--no-healthcheck"),
        *("--oom-kill-disable", "--disable-content-trust", "--quiet", "--help", "--use-api-socket"),
    }
)
