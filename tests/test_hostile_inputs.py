"""Hostile inputs through the real CLI: bad logs for `warmer ingest`, bad Dockerfiles and YAML
for `warmer refs`, bad catalogues for `warmer backtest`.

Each case builds its bad input next to a good one and asserts the exit status (0 with the
skip counted where the policy skips, 1 when a file was unreadable or damaged, 2 for bad
usage), one stderr line per problem naming the file (and line), no traceback, and the good
input still counted. Cases that involve a FIFO run the CLI in a subprocess with a timeout,
so a regression hangs nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from warmer.cli.main import cli

LOGS = Path(__file__).parent / "data" / "logs"
GOOD_EVENTS = 3  # podman-pull.log, the good file beside each bad one
BAD_EVENTS = 5  # docker-pull.log, what the bad files are made of
ROOT = os.geteuid() == 0
AT = "2024-05-01T12:00:00Z"


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # builds the inputs, returns the paths to pass
    code: int
    problems: list[str] = field(default_factory=list)  # one stderr line naming each
    events: int | None = None  # ingest: events counted in the summary
    refs: int | None = None  # refs: references found
    json_check: Callable[[dict[str, object]], bool] | None = None
    subprocess: bool = False  # a FIFO: run in a subprocess with a timeout


def _good_log(d: Path) -> str:
    path = d / "good.log"  # other content than RAW: a copy of the same content counts once
    path.write_bytes((LOGS / "podman-pull.log").read_bytes())
    return str(path)


def _log(name: str, data: bytes) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / name).write_bytes(data)
        return [str(d / name), _good_log(d)]

    return setup


RAW = (LOGS / "docker-pull.log").read_bytes()
_rng = random.Random(7)
# Noise between copies keeps the streams from compressing to a block or two, so a cut lands
# after many complete blocks.
BIG = b"".join(b"noise %d %s\n" % (i, _rng.randbytes(40).hex().encode()) + RAW for i in range(3000))
BIG_EVENTS = 3000 * BAD_EVENTS
GZ = gzip.compress(BIG)
ZST = zstandard.ZstdCompressor(write_checksum=True).compress(BIG)  # as the zstd tool writes


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    out[len(out) // 2 + 1] ^= 0xFF
    return bytes(out)


def _fifo(where: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        if where == "inside":
            (d / "logs").mkdir()
            os.mkfifo(d / "logs" / "pipe.log")
            return [str(d / "logs"), _good_log(d)]
        os.mkfifo(d / "pipe.log")
        return [str(d / "pipe.log"), _good_log(d)]

    return setup


def _socket(d: Path) -> list[str]:
    (d / "logs").mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(d / "logs" / "sock.log"))
    s.close()  # the socket file stays
    return [str(d / "logs"), _good_log(d)]


def _dir_loop(d: Path) -> list[str]:
    (d / "logs" / "sub").mkdir(parents=True)
    _good_log(d / "logs" / "sub")
    (d / "logs" / "sub" / "up").symlink_to("..")
    (d / "logs" / "self").symlink_to(".")
    return [str(d / "logs")]


def _link_loop(d: Path) -> list[str]:
    (d / "logs").mkdir()
    (d / "logs" / "a.log").symlink_to("b.log")
    (d / "logs" / "b.log").symlink_to("a.log")
    return [str(d / "logs"), _good_log(d)]


def _dangling(d: Path) -> list[str]:
    (d / "logs").mkdir()
    (d / "logs" / "gone.log").symlink_to(d / "nowhere.log")
    return [str(d / "logs"), _good_log(d)]


def _io_error(d: Path) -> list[str]:
    # A real read error that root gets too: reading /proc/self/mem at offset 0 is EIO.
    (d / "mem.log").symlink_to("/proc/self/mem")
    return [str(d / "mem.log"), _good_log(d)]


def _chmod_000(d: Path) -> list[str]:
    (d / "secret.log").write_bytes(RAW)
    (d / "secret.log").chmod(0)
    return [str(d / "secret.log"), _good_log(d)]


def _chmod_000_dir(d: Path) -> list[str]:
    (d / "logs" / "locked").mkdir(parents=True)
    (d / "logs" / "locked" / "x.log").write_bytes(RAW)
    (d / "logs" / "locked").chmod(0)
    return [str(d / "logs"), _good_log(d)]


def _dir_named_log(d: Path) -> list[str]:
    (d / "ci.log").mkdir()
    (d / "ci.log" / "job.log").write_bytes(RAW)
    return [str(d / "ci.log"), _good_log(d)]


def _missing(d: Path) -> list[str]:
    return [str(d / "nope.log"), _good_log(d)]


def _damaged(n: int, kind: str) -> Callable[[dict[str, object]], bool]:
    def check(s: dict[str, object]) -> bool:
        damaged = s["damaged"]
        assert isinstance(damaged, list) and len(damaged) == n
        return all(d["problem"] == kind and d["reason"] for d in damaged)

    return check


def _not_regular(n: int) -> Callable[[dict[str, object]], bool]:
    def check(s: dict[str, object]) -> bool:
        files = s["skipped_files"]
        assert isinstance(files, dict)
        return files["not_regular"] == n and s["damaged"] == []

    return check


def _bomb(d: Path) -> list[str]:
    (d / "bomb.log.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20)))
    return [str(d / "bomb.log.zst"), _good_log(d)]


lines = RAW.split(b"\n")
G, B = GOOD_EVENTS, BAD_EVENTS
ZST_SMALL = zstandard.ZstdCompressor().compress(RAW)
INGEST = [
    Case("binary", _log("blob.log", random.Random(1).randbytes(50_000)), 0, ["blob.log"], G),
    Case(
        "invalid-utf8",
        _log("u.log", b"\n".join([*lines[:3], b"caf\xe9\xff", *lines[3:]])),
        0,
        [],
        G + B,
    ),
    Case(
        "nul-bytes",
        _log("n.log", b"\n".join([*lines[:3], b"a\x00b\x00", *lines[3:]])),
        0,
        [],
        G + B,
    ),
    Case(
        "ansi", _log("c.log", b"\n".join(b"\x1b[32m" + x + b"\x1b[0m" for x in lines)), 0, [], G + B
    ),
    Case("crlf", _log("w.log", RAW.replace(b"\n", b"\r\n")), 0, [], G + B),
    Case("empty", _log("e.log", b""), 0, [], G),
    Case("empty-gz", _log("e.log.gz", gzip.compress(b"")), 0, [], G),
    Case(
        "huge-line-inside",
        _log("h.log", b"\n".join([*lines[:3], b"x" * (3 << 20), *lines[3:]])),
        0,
        [],
        G + B,
    ),
    Case("huge-single-line", _log("h1.log", b"Status: " + b"y" * (3 << 20)), 0, ["h1.log"], G),
    Case(
        "truncated-gz",
        _log("t.log.gz", GZ[: len(GZ) * 2 // 3]),
        1,
        ["t.log.gz: damaged: truncated gzip"],
        None,
        json_check=_damaged(1, "damaged"),
    ),
    Case(
        "truncated-zst",
        _log("t.log.zst", ZST[: len(ZST) * 2 // 3]),
        1,
        ["t.log.zst: damaged: truncated zstd"],
        None,
        json_check=_damaged(1, "damaged"),
    ),
    Case("gz-header-only", _log("h.log.gz", GZ[:5]), 1, ["h.log.gz: damaged"], G),
    Case("zst-magic-only", _log("m.log.zst", ZST[:4]), 1, ["m.log.zst: damaged"], G),
    Case("corrupt-gz", _log("x.log.gz", _flip(GZ)), 1, ["x.log.gz: damaged: corrupt gzip"], None),
    Case(
        "corrupt-zst", _log("x.log.zst", _flip(ZST)), 1, ["x.log.zst: damaged: corrupt zstd"], None
    ),
    Case(
        "gz-trailing-garbage",
        _log("g.log.gz", gzip.compress(RAW) + b"garbage!"),
        1,
        ["g.log.gz: damaged: corrupt gzip"],
        G + B,
    ),
    Case("gz-members", _log("m.log.gz", gzip.compress(RAW) + gzip.compress(RAW)), 0, [], G + 2 * B),
    Case("zst-frames", _log("f.log.zst", ZST_SMALL + ZST_SMALL), 0, [], G + 2 * B),
    Case("gz-zero-padding", _log("p.log.gz", gzip.compress(RAW) + b"\0" * 512), 0, [], G + B),
    Case("gz-named-log", _log("wrong.log", gzip.compress(RAW)), 0, [], G + B),
    Case("zst-named-txt", _log("wrong.txt", ZST_SMALL), 0, [], G + B),
    Case("plain-named-gz", _log("plain.gz", RAW), 0, [], G + B),
    Case("zstd-bomb", _bomb, 0, ["bomb.log.zst"], G),
    Case(
        "fifo-named",
        _fifo("named"),
        0,
        ["pipe.log: a FIFO"],
        G,
        json_check=_not_regular(1),
        subprocess=True,
    ),
    Case(
        "fifo-inside",
        _fifo("inside"),
        0,
        ["pipe.log: a FIFO"],
        G,
        json_check=_not_regular(1),
        subprocess=True,
    ),
    Case("socket-inside", _socket, 0, ["sock.log: a socket"], G, json_check=_not_regular(1)),
    Case(
        "device",
        lambda d: ["/dev/null", _good_log(d)],
        0,
        ["/dev/null: a device"],
        G,
        json_check=_not_regular(1),
    ),
    Case("dir-symlink-loop", _dir_loop, 0, [], G),
    Case(
        "file-symlink-loop",
        _link_loop,
        1,
        ["a.log: cannot read", "b.log: cannot read"],
        G,
        json_check=_damaged(2, "unreadable"),
    ),
    Case(
        "dangling-symlink",
        _dangling,
        1,
        ["gone.log: cannot read"],
        G,
        json_check=_damaged(1, "unreadable"),
    ),
    Case(
        "read-error-eio",
        _io_error,
        1,
        ["mem.log: cannot read"],
        G,
        json_check=_damaged(1, "unreadable"),
    ),
    # As root a mode-000 file or directory is still readable: then it is read (exit 0); the
    # unreadable policy is proved as root by the link-loop, dangling and EIO cases above.
    Case(
        "chmod-000",
        _chmod_000,
        0 if ROOT else 1,
        [] if ROOT else ["secret.log: cannot read"],
        G + B if ROOT else G,
    ),
    Case(
        "chmod-000-dir",
        _chmod_000_dir,
        0 if ROOT else 1,
        [] if ROOT else ["locked: cannot read"],
        G + B if ROOT else G,
    ),
    Case("dir-named-like-log", _dir_named_log, 0, [], G + B),
    Case("missing-path", _missing, 2, ["nope.log"], G),
]


def _dockerfile(text: str | bytes, name: str = "Dockerfile") -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "repo").mkdir()
        data = text.encode() if isinstance(text, str) else text
        (d / "repo" / name).parent.mkdir(parents=True, exist_ok=True)
        (d / "repo" / name).write_bytes(data)
        (d / "repo" / "good").mkdir()
        (d / "repo" / "good" / "Dockerfile").write_text("FROM alpine:3.19\n")
        return [str(d / "repo")]

    return setup


def _laughs(kind: str) -> str:
    head = (
        "apiVersion: v1\nkind: Pod\nl0: &l0 {containers: [{image: 'busybox:1'}]}\n"
        if kind == "k8s"
        else "x-l0: &l0 {image: 'busybox:1'}\n"
    )
    prefix = "l" if kind == "k8s" else "x-l"
    rows = [head]
    for i in range(1, 10):
        rows.append(f"{prefix}{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n")
    rows.append("spec: *l9\n" if kind == "k8s" else "services: {a: *l0, b: {image: *l9}}\n")
    return "".join(rows)


def _fifo_dockerfile(d: Path) -> list[str]:
    (d / "repo" / "svc").mkdir(parents=True)
    os.mkfifo(d / "repo" / "svc" / "Dockerfile")
    (d / "repo" / "Dockerfile").write_text("FROM alpine:3.19\n")
    return [str(d / "repo")]


def _dangling_compose(d: Path) -> list[str]:
    (d / "repo").mkdir()
    (d / "repo" / "compose.yaml").symlink_to(d / "elsewhere.yaml")
    (d / "repo" / "Dockerfile").write_text("FROM alpine:3.19\n")
    return [str(d / "repo")]


def _refs_dir_loop(d: Path) -> list[str]:
    (d / "repo").mkdir()
    (d / "repo" / "Dockerfile").write_text("FROM alpine:3.19\n")
    (d / "repo" / "loop").symlink_to(".")
    return [str(d / "repo")]


D = "Dockerfile"
REFS = [
    Case("from-no-image", _dockerfile("FROM\nFROM debian:12\n"), 0, [f"{D}:1"], refs=2),
    Case(
        "arg-missing",
        _dockerfile("FROM ${BASE}:1\n"),
        0,
        [f"{D}:1: FROM '${{BASE}}:1': ${{BASE}}"],
        refs=1,
    ),
    Case("arg-default", _dockerfile("ARG V=3.12\nFROM python:${V}\n"), 0, [], refs=2),
    Case("arg-empty-default", _dockerfile("ARG V=\nFROM python:${V}\n"), 0, [f"{D}:2"], refs=1),
    Case(
        "invalid-reference",
        _dockerfile("FROM Alpine:Latest!\n"),
        0,
        [f"{D}:1: FROM: invalid reference"],
        refs=1,
    ),
    Case("digest-garbage", _dockerfile("FROM alpine@sha256:1234\n"), 0, [f"{D}:1"], refs=1),
    Case("bom", _dockerfile("\ufeffFROM debian:12\n"), 0, [], refs=2),
    Case(
        "bom-syntax",
        _dockerfile("\ufeff# syntax=docker/dockerfile:1\nFROM debian:12\n"),
        0,
        [],
        refs=3,
    ),
    Case(
        "crlf",
        _dockerfile("FROM debian:12\r\nRUN echo hi\r\nCOPY --from=nginx:1 /a /b\r\n"),
        0,
        [],
        refs=3,
    ),
    Case("heredoc", _dockerfile("FROM debian:12\nRUN <<EOF\nFROM evil:1\nEOF\n"), 0, [], refs=2),
    Case(
        "syntax-invalid",
        _dockerfile("# syntax=Not_A:Ref!\nFROM debian:12\n"),
        0,
        [f"{D}:1"],
        refs=2,
    ),
    Case(
        "copy-from-missing-arg",
        _dockerfile("FROM debian:12\nCOPY --from=${SRC} /a /b\n"),
        0,
        [f"{D}:2"],
        refs=2,
    ),
    Case(
        "invalid-utf8",
        _dockerfile(b"FROM caf\xe9\nFROM debian:12\n"),
        0,
        [f"{D}:1: invalid UTF-8", f"{D}:1: FROM: invalid reference"],
        refs=2,
    ),
    Case(
        "binary",
        _dockerfile(b"\x00\x01\x02\xff" * 100),
        0,
        [f"{D}:1: invalid UTF-8", f"{D}: cannot parse"],
        refs=1,
    ),
    Case("empty", _dockerfile(""), 0, [f"{D}: cannot parse"], refs=1),
    Case(
        "line-over-64k",
        _dockerfile("FROM debian:12\nRUN " + "x" * 70000 + "\n"),
        0,
        [f"{D}: cannot parse"],
        refs=1,
    ),
    Case("continuations-only", _dockerfile("FROM debian:12\n\\\n\\\n"), 0, [], refs=2),
    Case(
        "fifo-dockerfile", _fifo_dockerfile, 0, ["svc/Dockerfile: a FIFO"], refs=1, subprocess=True
    ),
    Case("dangling-compose", _dangling_compose, 1, ["compose.yaml: cannot read"], refs=1),
    Case("dir-symlink-loop", _refs_dir_loop, 0, [], refs=1),
    Case("k8s-billion-laughs", _dockerfile(_laughs("k8s"), "pod.yaml"), 0, [], refs=2),
    Case(
        "compose-billion-laughs",
        _dockerfile(_laughs("compose"), "compose.yaml"),
        0,
        ["compose.yaml:10: image: a list"],
        refs=2,
    ),
    Case(
        "invalid-yaml",
        _dockerfile("services:\n  a:\n    image: [unclosed\n", "compose.yaml"),
        0,
        ["compose.yaml:4: invalid YAML"],
        refs=1,
    ),
    Case(
        "tab-indent-yaml",
        _dockerfile("services:\n\ta:\n", "compose.yaml"),
        0,
        ["compose.yaml:2: invalid YAML"],
        refs=1,
    ),
    Case(
        "deep-nesting-yaml",
        _dockerfile("[" * 20000, "deploy.yaml"),
        0,
        ["deploy.yaml:1: invalid YAML"],
        refs=1,
    ),
    Case(
        "top-level-list",
        _dockerfile("- image: a:1\n", "compose.yaml"),
        0,
        ["compose.yaml:1: a compose file's top level"],
        refs=1,
    ),
    Case("top-level-scalar-k8s", _dockerfile("just a string\n", "deploy.yaml"), 0, [], refs=1),
    Case(
        "image-list",
        _dockerfile("services:\n  a:\n    image: [a, b]\n", "compose.yaml"),
        0,
        ["compose.yaml:3: image: a list"],
        refs=1,
    ),
    Case(
        "image-int",
        _dockerfile("services:\n  a:\n    image: 5\n", "compose.yaml"),
        0,
        ["compose.yaml:3: image: '5' is a YAML int"],
        refs=1,
    ),
    Case(
        "image-null",
        _dockerfile("services:\n  a:\n    image:\n  b:\n    image: redis:7\n", "compose.yaml"),
        0,
        ["compose.yaml:3"],
        refs=2,
    ),
    Case(
        "image-unset-var",
        _dockerfile("services:\n  a:\n    image: app:${TAG}\n", "compose.yaml"),
        0,
        ["compose.yaml:3: image 'app:${TAG}': ${TAG}"],
        refs=1,
    ),
    Case(
        "k8s-bad-doc-midway",
        _dockerfile(
            "apiVersion: v1\nkind: Pod\nspec: {containers: [{image: 'a:1'}]}\n---\n: : :\n  - [\n",
            "deploy.yaml",
        ),
        0,
        ["deploy.yaml:"],
        refs=2,
    ),
    Case(
        "k8s-image-mapping",
        _dockerfile(
            "apiVersion: v1\nkind: Pod\nspec: {containers: [{image: {a: 1}}]}\n", "deploy.yaml"
        ),
        0,
        ["deploy.yaml:3: containers: a mapping"],
        refs=1,
    ),
    Case(
        "gitlab-custom-tag",
        _dockerfile("job:\n  image: !reference [.base, image]\n  script: [x]\n", ".gitlab-ci.yml"),
        0,
        [],
        refs=1,
    ),
    Case(
        "workflow-jobs-list",
        _dockerfile("jobs: [a, b]\n", ".github/workflows/ci.yml"),
        0,
        [],
        refs=1,
    ),
    Case(
        "workflow-top-level-list",
        _dockerfile("- a\n- b\n", ".github/workflows/ci.yml"),
        0,
        ["ci.yml:1: a github file's top level"],
        refs=1,
    ),
    Case(
        "yaml-bom-crlf",
        _dockerfile("\ufeffservices:\r\n  a:\r\n    image: redis:7\r\n", "compose.yaml"),
        0,
        [],
        refs=2,
    ),
    Case(
        "yaml-too-large",
        _dockerfile("#" * (9 << 20), "compose.yaml"),
        0,
        ["compose.yaml: 9437184 bytes is too large"],
        refs=1,
    ),
    Case(
        "missing-path",
        lambda d: [str(d / "nope"), *_dockerfile("FROM a:1\n")(d)],
        2,
        ["nope"],
        refs=2,
    ),
]


def _run(args: list[str], in_subprocess: bool) -> tuple[int, str, str]:
    full = ["--config", "/nonexistent.toml", *args]
    if in_subprocess:  # a FIFO: a regression must time out, not hang the suite
        code = "import sys; from warmer.cli.main import main; sys.argv[0] = 'warmer'; main()"
        proc = subprocess.run(
            [sys.executable, "-c", code, *full], capture_output=True, text=True, timeout=60
        )
        return proc.returncode, proc.stdout, proc.stderr
    r = CliRunner().invoke(cli, full, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _check_stderr(err: str, case: Case) -> list[str]:
    assert "Traceback" not in err
    problems = [line for line in err.splitlines() if line.startswith(("warning:", "error:"))]
    for needle in case.problems:
        assert sum(needle in line for line in problems) == 1, (needle, err)
    return problems


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", INGEST, ids=[c.id for c in INGEST])
def test_ingest_hostile(case: Case, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    args = case.setup(d)
    db = f"sqlite:///{tmp_path / 'w.db'}"
    code, out, err = _run(["ingest", *args, "--json", "--db", db], case.subprocess)
    assert code == case.code, err
    assert "Traceback" not in out
    warnings = _check_stderr(err, case)
    if case.code == 2:
        assert any(line.startswith("error:") for line in warnings)
        return
    summary = json.loads(out)
    # One warning line per problem file, and nothing else on stderr but the final error.
    warned = [w for w in warnings if w.startswith("warning:")]
    assert len(warned) == len(summary["warnings"])
    assert len(warned) >= len(case.problems) - (case.code == 1 and 0)
    if case.events is not None:
        assert summary["events"] == case.events
    else:  # damaged mid-stream: the good file and the lines before the damage
        assert GOOD_EVENTS + 100 < summary["events"] < GOOD_EVENTS + BIG_EVENTS
    if case.json_check is not None:
        assert case.json_check(summary)
    if case.code == 1:
        assert summary["damaged"] and err.splitlines()[-1].startswith("error:")
    else:
        assert summary["damaged"] == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", REFS, ids=[c.id for c in REFS])
def test_refs_hostile(case: Case, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    args = case.setup(d)
    code, out, err = _run(["refs", *args, "--json", "--no-store"], case.subprocess)
    assert code == case.code, err
    assert "Traceback" not in out
    warnings = _check_stderr(err, case)
    assert len([w for w in warnings if w.startswith("warning:")]) == len(case.problems) - (
        case.code == 2
    )
    if case.refs is not None:
        assert len(out.splitlines()) == case.refs, out


def test_truncated_logs_keep_exactly_the_complete_lines(tmp_path: Path) -> None:
    # Cut both formats at many points: the events stored are those of the complete lines
    # before the cut, never more (a half line) and never none (the old gzip behaviour).
    per_line = [1 if b"Status:" in x or b"Digest:" in x else 0 for x in RAW.split(b"\n")]
    assert sum(per_line) >= GOOD_EVENTS
    for name, blob in (("c.log.gz", GZ), ("c.log.zst", ZST)):
        for cut in (len(blob) // 3, len(blob) // 2, len(blob) - 9):
            path = tmp_path / name
            path.write_bytes(blob[:cut])
            code, out, err = _run(["ingest", str(path), "--dry-run", "--json", "--at", AT], False)
            assert code == 1 and "damaged" in err and "Traceback" not in err
            kept = len(out.splitlines())
            assert 0 < kept <= BIG_EVENTS, (name, cut)
            # what was kept is a prefix of the full stream's events
            full = tmp_path / ("full" + name[1:])
            full.write_bytes(blob)
            _, all_out, _ = _run(["ingest", str(full), "--dry-run", "--json", "--at", AT], False)
            assert out.splitlines() == all_out.splitlines()[:kept]


def test_backtest_bad_catalogue_is_bad_input(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    assert (
        _run(["ingest", str(LOGS / "docker-pull.log"), "--region", "eu", "--db", db], False)[0] == 0
    )
    os.mkfifo(tmp_path / "fifo.json")  # never opened: it would block the read forever
    cases = (
        ("bin.json", b"\xff\xfe\x00"),
        ("bad.json", b"{not json"),
        ("shape.json", b'{"images": 5}'),
    )
    for name, data in (*cases, ("fifo.json", None)):
        if data is not None:
            (tmp_path / name).write_bytes(data)
        code, _, err = _run(
            ["backtest", "--region", "eu", "--catalogue", str(tmp_path / name), "--db", db], False
        )
        assert code == 2 and "Traceback" not in err
        assert sum(name in line for line in err.splitlines()) == 1
