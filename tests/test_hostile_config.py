"""Hostile configuration: bad values, credential sources, database URLs and serve's metrics
address, each run through the real entry point (``warmer.cli.main.main``) of every command
that reads them.

Every case must end with exit 2 (bad config) or 1 (failed work), exactly one line on
stderr, starting with ``error:`` and naming the thing (key path, file, registry, URL), no
traceback, no secret in any output, and nothing written that should not be: a config that
fails to load creates no database, a run whose credentials are missing records no run.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from warmer.cli.main import main
from warmer.sandbox.procs import Proc, free_port
from warmer.store.dburl import DatabaseURLError, check_url, mask_url
from warmer.store.ledger import Ledger, utcnow

SECRET = "Hunter2-S3cr3t-xyzzy"  # in env variables, files and URLs: never in any output
DIGEST = "sha256:" + "a" * 64


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``warmer ARGV`` through the real entry point, in process; its exit status and output."""
    saved = sys.argv
    sys.argv = ["warmer", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_clean(o: Outcome, code: int, *fragments: str) -> str:
    """Exit ``code``, one stderr line starting ``error:`` holding every fragment, no
    traceback, no secret anywhere; returns the line."""
    lines = [line for line in o.err.splitlines() if line.strip()]
    assert o.code == code, (o.code, o.err)
    assert len(lines) == 1, o.err
    assert lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in o.err + o.out
    assert SECRET not in o.err + o.out
    return lines[0]


@pytest.fixture
def ports() -> dict[str, int]:
    """Ports on 127.0.0.1 that nothing listens on (connections are refused at once)."""
    return {name: free_port() for name in ("hub", "central", "eu", "pg")}


def base_config(db: str, ports: dict[str, int], extra: str = "") -> str:
    return f"""
[database]
url = "{db}"
[run]
retries = 0
timeout = "2s"
[upstreams.hub]
url = "http://127.0.0.1:{ports["hub"]}"
aliases = ["docker.io"]
[mirrors.central]
url = "http://127.0.0.1:{ports["central"]}"
parent = "hub"
[mirrors.eu]
url = "http://127.0.0.1:{ports["eu"]}"
parent = "central"
[regions.eu]
mirrors = ["eu"]
windows = [{{ cron = "0 1 * * *", duration = "3h" }}]
[serve]
metrics_port = 0
{extra}"""


# -- config values the schema must refuse: (id, TOML added or replaced, fragment) -----------

REGION = '[regions.x]\nmirrors = ["eu"]\n'
BAD_VALUES: list[tuple[str, str, str]] = [
    ("budget-array", REGION + "budget = [1]\n", "regions.x.budget: [1] is not a size"),
    ("budget-table", REGION + "budget = { a = 1 }\n", "regions.x.budget"),
    ("budget-inf", REGION + "budget = inf\n", "regions.x.budget: size inf is not a finite"),
    ("budget-nan", REGION + "budget = nan\n", "regions.x.budget: size nan is not a finite"),
    ("budget-negative", REGION + "budget = -1\n", "regions.x.budget: size -1 is negative"),
    ("budget-bool", REGION + "budget = true\n", "regions.x.budget: True is not a size"),
    ("budget-zero", REGION + "budget = 0\n", "regions.x.budget: 0 would warm nothing"),
    ("budget-zero-unit", REGION + 'budget = "0GiB"\n', "leave budget out for no limit"),
    ("budget-huge", REGION + 'budget = "99999999999TiB"\n', "regions.x.budget: size"),
    (
        "duration-array",
        REGION + 'windows = [{ cron = "0 1 * * *", duration = [1] }]\n',
        "regions.x.windows[0].duration: [1] is not a duration",
    ),
    (
        "duration-inf",
        REGION + 'windows = [{ cron = "0 1 * * *", duration = inf }]\n',
        "regions.x.windows[0].duration: duration inf is not a finite number",
    ),
    (
        "duration-weeks",
        REGION + 'windows = [{ cron = "0 1 * * *", duration = "999999999w" }]\n',
        "regions.x.windows[0].duration: duration '999999999w' is too long",
    ),
    (
        "bandwidth-zero-unit",
        '[mirrors.eu.link]\nbandwidth = "0MB/s"\n',
        "mirrors.eu.link.bandwidth: rate '0MB/s' is less than 1 B/s",
    ),
    (
        "bandwidth-half-byte",
        '[mirrors.eu.link]\nbandwidth = "0.5B/s"\n',
        "mirrors.eu.link.bandwidth: rate '0.5B/s' is less than 1 B/s",
    ),
    ("bandwidth-zero", "[mirrors.eu.link]\nbandwidth = 0\n", '"unlimited", for no cap'),
    ("bandwidth-nan", "[mirrors.eu.link]\nbandwidth = nan\n", "mirrors.eu.link.bandwidth"),
    (
        "concurrency-bool",
        "[mirrors.eu.link]\nconcurrency = true\n",
        "mirrors.eu.link.concurrency: Input should be a valid integer (got a boolean)",
    ),
    ("retries-float", "[run]\nretries = 1.0\n", "run.retries"),
    ("timeout-zero", '[run]\ntimeout = "0s"\n', "run.timeout: '0s': must be more than 0"),
    ("ttl-negative", '[mirrors.xx]\nurl = "http://h"\nparent = "hub"\nttl = -5\n', "ttl"),
    ("scale-nan", "[serve]\ntime_scale = nan\n", "serve.time_scale"),
    ("misfire-zero", '[serve]\nmisfire_grace = "0s"\n', "serve.misfire_grace"),
    ("region-no-mirrors", "[regions.x]\nmirrors = []\n", "regions.x.mirrors: empty"),
    ("region-no-platforms", REGION + "platforms = []\n", "regions.x.platforms: empty"),
    (
        "mirror-url-password",
        f'[mirrors.xx]\nurl = "http://bob:{SECRET}@127.0.0.1:9"\nparent = "hub"\n',
        "mirrors.xx.url: 'http://bob:***@127.0.0.1:9': a user or password never goes in a URL",
    ),
    (
        "replica-url-password",
        f'[mirrors.xx]\nurl = "http://h"\nparent = "hub"\nreplicas = ["https://u:{SECRET}@r1"]\n',
        "mirrors.xx.replicas: 'https://u:***@r1'",
    ),
    (
        "ftp-url-password",
        f'[mirrors.xx]\nurl = "ftp://bob:{SECRET}@h"\nparent = "hub"\n',
        "is not an http(s) URL",
    ),
    ("url-bad-port", '[mirrors.xx]\nurl = "http://h:99999"\nparent = "hub"\n', "mirrors.xx.url"),
    (
        "hook-url-password",
        f'[mirrors.eu.invalidate]\nurl = "http://u:{SECRET}@h/purge"\n',
        "use headers_env",
    ),
    (
        "hook-literal-authorization",
        f'[mirrors.eu.invalidate]\nurl = "http://h/p"\nheaders = {{ Authorization = "Bearer {SECRET}" }}\n',
        "mirrors.eu.invalidate.headers: Authorization carries a credential",
    ),
    (
        "hook-header-newline",
        '[mirrors.eu.invalidate]\nurl = "http://h/p"\nheaders = { X-Why = "a\\r\\nInjected: 1" }\n',
        "a header value cannot hold a line break",
    ),
    (
        "credentials-two-sources",
        '[upstreams.hub.credentials]\nusername = "u"\npassword_env = "A"\npassword_file = "/p"\n',
        "upstreams.hub.credentials: give one of password_env, password_file",
    ),
    (
        "credentials-bad-env-name",
        '[upstreams.hub.credentials]\nusername = "u"\npassword_env = "NOT A NAME"\n',
        "is not an environment variable name",
    ),
    (
        "credentials-user-only",
        '[upstreams.hub.credentials]\nusername = "u"\n',
        "a username needs password_env or password_file",
    ),
    ("metrics-host-garbage", '[serve]\nmetrics_host = "not a host!"\n', "serve.metrics_host"),
    ("database-garbage", "[database]\nurl = 'garbage'\n", "database.url: 'garbage': not a URL"),
    (
        "database-scheme",
        f"[database]\nurl = 'mysql://u:{SECRET}@127.0.0.1/x'\n",
        "database.url: 'mysql://u:***@127.0.0.1/x': unsupported scheme 'mysql'",
    ),
    ("database-empty", "[database]\nurl = ''\n", "database.url: is empty"),
    ("unknown-key", "[mirrors.eu.link]\nspeed = 1\n", "mirrors.eu.link.speed: unknown key"),
]

COMMANDS: dict[str, list[str]] = {
    "check": ["config", "check"],
    "plan": ["plan", "-r", "eu", "alpine:3"],
    "run": ["run", "-r", "eu", "alpine:3"],
    "verify": ["verify", "-r", "eu"],
    "refresh": ["refresh", "-r", "eu"],
    "status": ["status"],
    "serve": ["serve"],
}
# Every bad value through `config check`; a spread of them through every other command.
SPREAD = [
    "budget-array",
    "duration-weeks",
    "bandwidth-half-byte",
    "mirror-url-password",
    "database-scheme",
    "region-no-mirrors",
    "hook-literal-authorization",
]
LOAD_CASES = [("check", case) for case in BAD_VALUES] + [
    (command, case)
    for command in COMMANDS
    if command != "check"
    for case in BAD_VALUES
    if case[0] in SPREAD
]


def _merge(base: str, extra: str) -> str:
    """``extra``'s tables replace the base's tables of the same name (TOML forbids twice)."""
    out, skip = [], False
    headers = {line.strip() for line in extra.splitlines() if line.startswith("[")}
    for line in base.splitlines():
        if line.startswith("["):
            skip = line.strip() in headers
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n" + extra


@pytest.mark.parametrize(
    ("command", "case"), LOAD_CASES, ids=[f"{c}-{case[0]}" for c, case in LOAD_CASES]
)
def test_a_bad_value_is_one_line_exit_2_and_writes_nothing(
    command: str,
    case: tuple[str, str, str],
    tmp_path: Path,
    ports: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, extra, fragment = case
    db = tmp_path / "w.db"
    config = tmp_path / "warmer.toml"
    text = _merge(base_config(f"sqlite:///{db}", ports), extra)
    if "[database]" in extra:
        text = text.replace(f'[database]\nurl = "sqlite:///{db}"', "", 1)
    config.write_text(text)
    o = run(["--config", str(config), *COMMANDS[command]], capsys)
    assert_clean(o, 2, str(config), fragment)
    assert not db.exists()  # the config failed to load: nothing was opened or written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warmer.toml"]


# -- credential sources that cannot be used: (id, credentials table, files, fragments) -------


def _docker_config(path: Path, content: object) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _cred_cases(tmp: Path, host: str) -> dict[str, tuple[str, list[str]]]:
    """Credentials tables (TOML) with the fragments their error must hold."""
    missing = tmp / "no-such-password"
    binary = tmp / "binary-password"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    empty = tmp / "empty-password"
    empty.write_text("\n" + SECRET + "\n")
    broken = _docker_config(tmp / "broken.json", '{"auths": {"' + host + '": {"auth": "' + SECRET)
    not_object = _docker_config(tmp / "list.json", [SECRET])
    bad_b64 = _docker_config(tmp / "b64.json", {"auths": {host: {"auth": SECRET + "!!"}}})
    no_colon = _docker_config(
        tmp / "nocolon.json",
        {"auths": {host: {"auth": base64.b64encode(SECRET.encode()).decode()}}},
    )
    helper = _docker_config(tmp / "helper.json", {"credHelpers": {host: "warmer-test-absent"}})
    evil = _docker_config(tmp / "evil.json", {"credHelpers": {host: "../../bin/sh"}})
    store = _docker_config(tmp / "store.json", {"credsStore": "warmer-test-absent-store"})
    directory = _docker_config(tmp / "dir.json", "{}")
    Path(directory).unlink()
    Path(directory).mkdir()
    return {
        "password-env-unset": (
            'username = "bob"\npassword_env = "WARMER_HOSTILE_UNSET"',
            ["password_env: environment variable WARMER_HOSTILE_UNSET is not set"],
        ),
        "password-env-empty": (
            'username = "bob"\npassword_env = "WARMER_HOSTILE_EMPTY"',
            ["WARMER_HOSTILE_EMPTY is not set or empty"],
        ),
        "username-env-unset": (
            'username_env = "WARMER_HOSTILE_UNSET"\npassword_env = "WARMER_HOSTILE_SECRET"',
            ["username_env: environment variable WARMER_HOSTILE_UNSET"],
        ),
        "token-env-unset": ('token_env = "WARMER_HOSTILE_UNSET"', ["token_env: environment"]),
        "password-file-missing": (
            f'username = "bob"\npassword_file = "{missing}"',
            [f"password_file: cannot read {missing}: No such file or directory"],
        ),
        "password-file-binary": (
            f'username = "bob"\npassword_file = "{binary}"',
            [f"password_file: {binary} is not UTF-8 text"],
        ),
        "password-file-empty-line": (
            f'username = "bob"\npassword_file = "{empty}"',
            [f"password_file: {empty} is empty"],
        ),
        "password-file-directory": (
            f'username = "bob"\npassword_file = "{tmp}"',
            [f"password_file: cannot read {tmp}: Is a directory"],
        ),
        "docker-config-broken-json": (
            f'docker_config = "{broken}"',
            [f"docker_config: Docker config {broken} is not valid JSON"],
        ),
        "docker-config-not-object": (
            f'docker_config = "{not_object}"',
            [f"Docker config {not_object} is not a JSON object"],
        ),
        "docker-config-directory": (
            f'docker_config = "{directory}"',
            [f"cannot read Docker config {directory}: Is a directory"],
        ),
        "docker-config-not-base64": (
            f'docker_config = "{bad_b64}"',
            [f"{bad_b64} auths['{host}']: 'auth' is not base64 of user:password"],
        ),
        "docker-config-no-colon": (
            f'docker_config = "{no_colon}"',
            ["'auth' is not base64 of user:password"],
        ),
        "cred-helper-absent": (
            f'docker_config = "{helper}"',
            [
                f"{helper} credHelpers: credential helper docker-credential-warmer-test-absent "
                "not found on PATH"
            ],
        ),
        "cred-helper-path": (
            f'docker_config = "{evil}"',
            ["'../../bin/sh' is not a credential helper name"],
        ),
        "creds-store-absent": (
            f'docker_config = "{store}"',
            [f"{store} credsStore: credential helper docker-credential-warmer-test-absent-store"],
        ),
    }


CRED_IDS = [
    "password-env-unset",
    "password-env-empty",
    "username-env-unset",
    "token-env-unset",
    "password-file-missing",
    "password-file-binary",
    "password-file-empty-line",
    "password-file-directory",
    "docker-config-broken-json",
    "docker-config-not-object",
    "docker-config-directory",
    "docker-config-not-base64",
    "docker-config-no-colon",
    "cred-helper-absent",
    "cred-helper-path",
    "creds-store-absent",
]
CRED_COMMANDS = ["plan", "run", "verify", "refresh", "serve"]
# Every source through plan; a spread through run, verify and refresh.
CRED_SPREAD = [
    "password-env-unset",
    "password-file-missing",
    "docker-config-broken-json",
    "docker-config-not-base64",
    "cred-helper-absent",
]
# The registry whose credentials are broken: the upstream (tags are pinned there first), or
# the mirror each command talks to (plan and run resolve through the top tier, central;
# verify reads the region's mirror, eu).
# (refresh asks a mirror only after the upstream answered: not with no upstream at all.)
MIRROR_OF = {"plan": "mirrors.central", "run": "mirrors.central", "verify": "mirrors.eu"}
CRED_CASES = (
    [("plan", c, "upstreams.hub") for c in CRED_IDS]
    + [(c, k, "upstreams.hub") for c in CRED_COMMANDS[1:-1] for k in CRED_SPREAD]
    + [(c, k, MIRROR_OF[c]) for c in MIRROR_OF for k in CRED_SPREAD[:2]]
    # serve reads every source of its regions' chains before it starts.
    + [("serve", k, w) for k in CRED_SPREAD for w in ("upstreams.hub", "mirrors.eu")]
)


def _seed(url: str, eu_url: str) -> None:
    """A warm manifest at eu and its tag's resolution: what verify and refresh check."""
    ledger = Ledger(url)
    now = utcnow()
    ledger.record_holding(
        mirror="eu", instance=eu_url, repository="library/alpine", kind="manifest",
        digest=DIGEST, size=10, now=now, ttl=timedelta(days=1), run_id=None,
    )  # fmt: skip
    ledger.record_resolution(
        image="docker.io/library/alpine", tag="3", digest=DIGEST,
        media_type="application/vnd.oci.image.manifest.v1+json", where="eu", tier=1, now=now,
    )  # fmt: skip


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("WARMER_HOSTILE_UNSET", raising=False)
    monkeypatch.setenv("WARMER_HOSTILE_EMPTY", "")
    monkeypatch.setenv("WARMER_HOSTILE_SECRET", SECRET)
    yield


@pytest.mark.parametrize(
    ("command", "case", "where"), CRED_CASES, ids=[f"{c}-{w}-{k}" for c, k, w in CRED_CASES]
)
def test_an_unusable_credential_source_is_one_line_exit_2_naming_registry_and_source(
    command: str,
    case: str,
    where: str,
    tmp_path: Path,
    ports: dict[str, int],
    capsys: pytest.CaptureFixture[str],
    secret_env: None,
) -> None:
    host = f"127.0.0.1:{ports[where.split('.')[1]]}"
    table, fragments = _cred_cases(tmp_path, host)[case]
    config = tmp_path / "warmer.toml"
    url = f"sqlite:///{tmp_path / 'w.db'}"
    config.write_text(base_config(url, ports, f"[{where}.credentials]\n{table}\n"))
    if command in ("verify", "refresh"):
        _seed(url, f"http://127.0.0.1:{ports['eu']}")
    o = run(["--config", str(config), *COMMANDS[command]], capsys)
    line = assert_clean(o, 2, f"{where}.credentials: credentials for {host}", *fragments)
    assert "Traceback" not in line
    ledger = Ledger(url)
    if command == "run":
        assert ledger.recent_runs(5) == []  # nothing planned or recorded
    if command in ("verify", "refresh"):  # what the ledger holds is left as it was
        assert ledger.incidents() == [] and ledger.drifts() == []
        assert ledger.holdings_summary() == [
            {"mirror": "eu", "state": "warm", "items": 1, "bytes": 10}
        ]


# -- database URLs that cannot be used ------------------------------------------------------

DB_COMMANDS = ["status", "plan", "run", "verify", "refresh", "serve"]


def _db_cases(tmp: Path, pg_port: int) -> dict[str, tuple[str, int, str]]:
    a_file = tmp / "a-file"
    a_file.write_text("not a directory")
    return {
        "pg-closed-port": (
            f"postgresql://warmer:{SECRET}@127.0.0.1:{pg_port}/warmer",
            1,
            f"database postgresql://warmer:***@127.0.0.1:{pg_port}/warmer: cannot connect",
        ),
        "sqlite-under-a-file": (
            f"sqlite:///{a_file}/w.db",
            1,
            f"database sqlite:///{a_file}/w.db: cannot open it",
        ),
        "sqlite-a-directory": (
            f"sqlite:///{tmp}",
            1,
            f"database sqlite:///{tmp}: cannot open it: unable to open database file",
        ),
    }


DB_CASES = [(c, k) for c in DB_COMMANDS for k in ("pg-closed-port", "sqlite-under-a-file")] + [
    ("status", "sqlite-a-directory")
]


@pytest.mark.parametrize(("command", "case"), DB_CASES, ids=[f"{c}-{k}" for c, k in DB_CASES])
def test_an_unreachable_database_is_one_line_exit_1_with_the_password_masked(
    command: str,
    case: str,
    tmp_path: Path,
    ports: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, code, fragment = _db_cases(tmp_path, ports["pg"])[case]
    config = tmp_path / "warmer.toml"
    config.write_text(base_config(url, ports))
    o = run(["--config", str(config), *COMMANDS[command]], capsys)
    assert_clean(o, code, fragment)
    assert run(["--config", str(config), "config", "check"], capsys).code == 0


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("garbage", "'garbage'"),
        (f"oracle://scott:{SECRET}@127.0.0.1/x", "database url 'oracle://scott:***@127.0.0.1/x'"),
        ("postgresql://u@127.0.0.1:1", "names no database"),
    ],
)
def test_a_bad_db_option_is_exit_2(
    url: str,
    fragment: str,
    tmp_path: Path,
    ports: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--db`` (ingest, rank) goes to the same check as the config's URL."""
    config = tmp_path / "warmer.toml"
    config.write_text(base_config(f"sqlite:///{tmp_path / 'w.db'}", ports))
    o = run(["--config", str(config), "rank", "--region", "eu", "--db", url], capsys)
    assert_clean(o, 2, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warmer.toml"]


# -- warmer serve's metrics address -------------------------------------------------------


def test_serve_with_its_metrics_port_in_use_is_exit_1(
    tmp_path: Path, ports: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "warmer.toml"
        config.write_text(base_config(f"sqlite:///{tmp_path / 'w.db'}", ports))
        o = run(["--config", str(config), "serve", "--metrics-port", str(port)], capsys)
    assert_clean(o, 1, f"metrics server 127.0.0.1:{port}", "the port is in use")


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("192.0.2.1", "192.0.2.1 is not an address of this machine"),  # TEST-NET-1: not ours
        ("2001:db8::1", "is not an address of this machine"),
    ],
)
def test_serve_on_an_address_not_of_this_machine_is_exit_2(
    host: str,
    fragment: str,
    tmp_path: Path,
    ports: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "warmer.toml"
    extra = f'metrics_host = "{host}"\n'
    text = base_config(f"sqlite:///{tmp_path / 'w.db'}", ports).replace(
        "metrics_port = 0\n", f"metrics_port = {free_port()}\n" + extra
    )
    config.write_text(text)
    o = run(["--config", str(config), "serve"], capsys)
    assert_clean(o, 2, "metrics server", fragment)


def test_a_missing_database_on_a_real_postgresql_is_exit_1_masked(
    postgres_server: Proc, tmp_path: Path, ports: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """The server answers, the database does not exist: failed work, the server's reason."""
    server = postgres_server.url.replace("postgresql+psycopg://postgres@", "postgresql://")
    url = server.replace("postgresql://", f"postgresql://postgres:{SECRET}@").rsplit("/", 1)[0]
    url += "/warmer_hostile_absent"
    config = tmp_path / "warmer.toml"
    config.write_text(base_config(url, ports))
    o = run(["--config", str(config), "status"], capsys)
    assert_clean(o, 1, "database postgresql://postgres:***@127.0.0.1:", "warmer_hostile_absent")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"postgresql://u:{SECRET}@h/db", "postgresql://u:***@h/db"),
        (f"postgresql://u:p@{SECRET}@h/db", "postgresql://u:***@h/db"),  # "@" in the password
        (f"postgresql://u:a/{SECRET}@h/db", "postgresql://u:***@h/db"),  # "/" in the password
        (f"http://{SECRET}@h", "http://***@h"),  # a token as the user name
        ("sqlite:///w.db", "sqlite:///w.db"),
        (
            f"two: 'mysql://a:{SECRET}@c/d' 'http://x:{SECRET}@z'",
            "two: 'mysql://a:***@c/d' 'http://x:***@z'",
        ),
    ],
)
def test_urls_are_shown_with_the_password_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("garbage", "not a URL"),
        ("", "is empty"),
        ("sqlite+pysqlite:///x.db", "unsupported scheme"),
        (f"mysql://u:{SECRET}@h/x", "unsupported scheme 'mysql'"),
        ("sqlite://host/x.db", "names a file"),
        ("postgresql://u@h", "names no database"),
        ("postgresql://u@h:notaport/db", "not a URL"),
        ("postgresql://u@h:99999/db", "port 99999 is out of range"),
        ("sqlite:///w.db\nx", "control character"),
    ],
)
def test_database_urls_are_checked_before_use(url: str, fragment: str) -> None:
    with pytest.raises(DatabaseURLError) as info:
        check_url(url)
    assert fragment in str(info.value) and SECRET not in str(info.value)
    assert check_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert check_url("sqlite:///w.db") == "sqlite:///w.db"
