"""Credentials and challenge auth: pure parsing, credential sources, and real registries with
htpasswd (Basic) and token (Bearer) auth. The token server is a small aiohttp app on a real
loopback socket that signs ES256 JWTs the registry verifies against its certificate."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from warmer.oci.auth import (
    Challenge,
    CredentialRef,
    Credentials,
    CredentialsError,
    Secret,
    TokenCache,
    check_ref,
    credentials_from_docker_config,
    credentials_from_ref,
    parse_token_response,
    parse_www_authenticate,
    token_request,
)
from warmer.oci.registry import RegistryClient, Unauthorized
from warmer.sandbox.procs import Proc

PASSWORD = "pw-Zq8-never-shown"


# --- pure ------------------------------------------------------------------------------------


def test_parse_www_authenticate() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull"'
    )
    assert c.scheme == "bearer" and c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.params["scope"] == "repository:library/ubuntu:pull"
    two = parse_www_authenticate('Basic realm="a, b", Bearer realm=http://x/t, error=invalid_token')
    assert [x.scheme for x in two] == ["basic", "bearer"]
    assert two[0].realm == "a, b" and two[1].params == {
        "realm": "http://x/t",
        "error": "invalid_token",
    }
    assert parse_www_authenticate('Basic realm="quoted \\"q\\""')[0].realm == 'quoted "q"'
    assert parse_www_authenticate("") == []


def test_token_request_pull_scope_and_basic() -> None:
    c = Challenge("bearer", {"realm": "http://127.0.0.1:1/token", "service": "svc"})
    req = token_request(c, ["repository:a/b:pull"], Credentials.basic("u", "p"))
    assert req.method == "GET"
    assert req.url.params.get_list("scope") == ["repository:a/b:pull"]
    assert req.url.params["service"] == "svc"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    anon = token_request(c, [], None)
    assert "Authorization" not in anon.headers and "scope" not in anon.url.params
    refresh = token_request(c, ["s"], Credentials(identity_token=Secret("rt")))
    assert refresh.method == "POST" and b"grant_type=refresh_token" in refresh.read()


def test_token_response_and_cache_expiry() -> None:
    assert parse_token_response(b'{"token": "a", "expires_in": 300}') == ("a", 300.0)
    assert parse_token_response(b'{"access_token": "b"}') == ("b", 60.0)
    with pytest.raises(CredentialsError):
        parse_token_response(b'{"nothing": 1}')
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    key = TokenCache.key(Challenge("bearer", {"realm": "r"}), ["repository:a:pull"])
    cache.put(key, "tok", 60)
    assert cache.get(key) == "tok"
    now[0] += 54
    assert cache.get(key) == "tok"
    now[0] += 2  # inside the renewal margin: treated as expired
    assert cache.get(key) is None


def test_secrets_never_in_repr_or_str() -> None:
    creds = Credentials.basic("alice", PASSWORD, source="$REG_PW")
    for text in (repr(creds), str(creds), repr(Secret(PASSWORD)), f"{creds.password}"):
        assert PASSWORD not in text
    assert "alice" in repr(creds) and "$REG_PW" in repr(creds)
    tok = Credentials(token=Secret("t0k3n-value"))
    assert "t0k3n-value" not in repr(tok)
    client = RegistryClient("http://127.0.0.1:9", credentials=creds)
    assert PASSWORD not in repr(client)


def test_credentials_from_ref(tmp_path: Path) -> None:
    env = {"REG_USER": "alice", "REG_PW": PASSWORD, "REG_TOKEN": "tk"}
    c = credentials_from_ref(
        CredentialRef(username_env="REG_USER", password_env="REG_PW"), "h", env
    )
    assert c is not None and c.username == "alice" and c.password == Secret(PASSWORD)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    c = credentials_from_ref(CredentialRef(username="bob", password_file=str(pw)), "h", env)
    assert c is not None and c.password == Secret(PASSWORD) and c.source == str(pw)
    c = credentials_from_ref(CredentialRef(token_env="REG_TOKEN"), "h", env)
    assert c is not None and c.token == Secret("tk")
    assert credentials_from_ref(CredentialRef(), "h", env) is None
    with pytest.raises(CredentialsError, match=r"MISSING_PW is not set"):
        credentials_from_ref(CredentialRef(username="a", password_env="MISSING_PW"), "h", env)
    with pytest.raises(CredentialsError, match=r"password_file: cannot read .*No such file"):
        credentials_from_ref(CredentialRef(username="a", password_file=str(tmp_path / "no")), "h")
    with pytest.raises(CredentialsError, match="no username"):
        credentials_from_ref(CredentialRef(password_env="REG_PW"), "h", env)


def _write_helper(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def helper_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_docker_config_auths_helpers_and_store(tmp_path: Path, helper_path: Path) -> None:
    # A real helper program: reads the server URL on stdin, answers JSON (or "not found").
    _write_helper(
        helper_path,
        "fake",
        'read server\ncase "$server" in\n'
        '  ghcr.io) echo \'{"ServerURL":"ghcr.io","Username":"gh","Secret":"'
        + PASSWORD
        + "\"}' ;;\n"
        '  https://index.docker.io/v1/) echo \'{"Username":"<token>","Secret":"idtok"}\' ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
    )
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "auths": {
                    "https://quay.io": {
                        "auth": base64.b64encode(b"q:" + PASSWORD.encode()).decode()
                    },
                    "127.0.0.1:5000": {"username": "local", "password": "pw"},
                },
                "credHelpers": {"ghcr.io": "fake"},
                "credsStore": "fake",
            }
        )
    )
    quay = credentials_from_docker_config("quay.io", cfg)
    assert quay is not None and quay.username == "q" and quay.password == Secret(PASSWORD)
    local = credentials_from_docker_config("127.0.0.1:5000", cfg)
    assert local is not None and local.username == "local"
    gh = credentials_from_docker_config("ghcr.io", cfg)
    assert gh is not None and gh.username == "gh" and gh.source == "docker-credential-fake"
    hub = credentials_from_docker_config("docker.io", cfg)  # via credsStore, Docker Hub's URL
    assert hub is not None and hub.identity_token == Secret("idtok")
    assert credentials_from_docker_config("other.example", cfg) is None
    assert credentials_from_docker_config("x", tmp_path / "absent.json") is None
    cfg.write_text(json.dumps({"credHelpers": {"ghcr.io": "missing-helper"}}))
    with pytest.raises(CredentialsError, match="docker-credential-missing-helper not found"):
        credentials_from_docker_config("ghcr.io", cfg)


def test_unusable_sources_are_one_line_naming_the_source_never_the_secret(
    tmp_path: Path, helper_path: Path
) -> None:
    """Each broken source: a CredentialsError naming the registry and the source, one line,
    without the secret; a helper name with a path in it is never run."""
    marker = tmp_path / "ran"
    (helper_path / "docker-credential-sneaky").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (helper_path / "docker-credential-noexec").write_text("#!/bin/sh\necho {}\n")  # no +x
    b64 = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    first = tmp_path / "two-lines"
    first.write_text(f"{PASSWORD}\nsecond line\n")
    c = credentials_from_ref(CredentialRef(username="bob", password_file=str(first)), "h")
    assert c is not None and c.password == Secret(PASSWORD)  # the first line, as documented
    cases: list[tuple[object, str]] = [
        ({"auths": {"h": {"auth": b64[:-2] + "!!"}}}, "auths['h']: 'auth' is not base64"),
        ({"credHelpers": {"h": "../bin/sneaky"}}, "'../bin/sneaky' is not a credential helper"),
        ({"credHelpers": {"h": "noexec"}}, "docker-credential-noexec cannot be run"),
        ({"credsStore": "absent-store"}, "credsStore: credential helper docker-credential-absent"),
        ('{"auths": {"h": {"auth": "' + b64, "is not valid JSON"),
        ([b64], "is not a JSON object"),
    ]
    for content, fragment in cases:
        cfg = tmp_path / "config.json"
        cfg.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(CredentialsError) as info:
            credentials_from_ref(CredentialRef(docker_config=str(cfg)), "h")
        text = str(info.value)
        assert text.startswith("credentials for h: docker_config: ") and fragment in text, text
        assert PASSWORD not in text and b64 not in text and "\n" not in text
    assert not marker.exists()
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff" + PASSWORD.encode())
    for path, fragment in ((binary, "is not UTF-8 text"), (tmp_path, "Is a directory")):
        with pytest.raises(CredentialsError, match=f"password_file: .*{fragment}") as info:
            credentials_from_ref(CredentialRef(username="b", password_file=str(path)), "h")
        assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        (CredentialRef(username="u", password_env="A", password_file="/p"), "give one of"),
        (CredentialRef(token_env="T", docker_config=True), "give one of token_env, docker_config"),
        (CredentialRef(username="u", username_env="U", password_env="P"), "give one of username"),
        (CredentialRef(username="u", token_env="T"), "token_env does not take a username"),
        (CredentialRef(username="u"), "a username needs password_env or password_file"),
        (CredentialRef(password_file="/p"), "a password needs username or username_env"),
        (CredentialRef(username="u", password_env="1BAD"), "not an environment variable name"),
        (CredentialRef(username="u", password_file=" "), "password_file: empty"),
    ],
)
def test_check_ref_refuses_ambiguous_or_unusable_references(
    ref: CredentialRef, fragment: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        check_ref(ref)
    check_ref(CredentialRef(username="u", password_env="P"))  # a good one passes
    check_ref(CredentialRef(docker_config=True))


# --- Basic: a real registry with htpasswd ------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry(registry_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Proc:
    d = tmp_path_factory.mktemp("htpasswd")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (d / "htpasswd").write_text(f"alice:{hashed}\n")
    extra = f"auth:\n  htpasswd:\n    realm: warmer-test\n    path: {d / 'htpasswd'}\n"
    proc: Proc = registry_factory("basic", extra_config=extra)
    return proc


async def test_basic_auth_registry(basic_registry: Proc, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = Credentials.basic("alice", PASSWORD, source="$REG_PW")
    async with RegistryClient(basic_registry.url, credentials=good, backoff=0.01) as c:
        await c.ping()
        d = await c.push_blob("t/basic", b"basic-auth-blob")
        assert await c.blob_size("t/basic", d.digest) == len(b"basic-auth-blob")
    errors: list[str] = []
    async with RegistryClient(basic_registry.url, backoff=0.01) as anon:
        with pytest.raises(Unauthorized, match="no credentials") as e1:
            await anon.blob_size("t/basic", d.digest)
        errors.append(str(e1.value))
    bad = Credentials.basic("alice", PASSWORD + "-wrong", source="$REG_PW")
    async with RegistryClient(basic_registry.url, credentials=bad, backoff=0.01) as c:
        with pytest.raises(Unauthorized, match=r"credentials from \$REG_PW") as e2:
            await c.ping()
        errors += [str(e2.value), repr(e2.value)]
    for text in [*errors, caplog.text]:
        assert PASSWORD not in text
        assert base64.b64encode(f"alice:{PASSWORD}".encode()).decode() not in text


# --- Bearer: a real registry with token auth and a loopback token server ------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues ES256 JWTs for the scopes asked; checks Basic credentials when users are set."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    users: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lifetime: int = 300

    def jwt(self, claims: dict[str, Any]) -> str:
        der = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        header = {"alg": "ES256", "typ": "JWT", "x5c": [der]}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = utils.decode_dss_signature(
            self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    async def handle(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        authz = request.headers.get("Authorization")
        self.requests.append({"scopes": scopes, "auth": authz is not None})
        if self.users:
            ok = False
            if authz is not None and authz.startswith("Basic "):
                user, _, pw = base64.b64decode(authz.split(" ", 1)[1]).decode().partition(":")
                ok = self.users.get(user) == pw
            if not ok:
                return web.json_response({"details": "bad credentials"}, status=401)
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "warmer-test-issuer",
            "sub": "someone",
            "aud": "warmer-test-registry",
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return web.json_response({"token": self.jwt(claims), "expires_in": self.lifetime})


def _self_signed() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmer test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture
async def bearer(registry_factory: Any, tmp_path: Path) -> AsyncIterator[tuple[Proc, TokenServer]]:
    key, cert = _self_signed()
    server = TokenServer(key, cert, users={"alice": PASSWORD})
    app = web.Application()
    app.router.add_get("/token", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    bundle = tmp_path / "issuer.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    extra = (
        "auth:\n  token:\n"
        f"    realm: http://{host}:{port}/token\n"
        "    service: warmer-test-registry\n"
        "    issuer: warmer-test-issuer\n"
        f"    rootcertbundle: {bundle}\n"
    )
    # Started from a thread: the factory blocks while it waits for readiness.
    proc: Proc = await asyncio.to_thread(registry_factory, "bearer", None, extra)
    try:
        yield proc, server
    finally:
        await runner.cleanup()
        proc.stop()


async def test_bearer_tokens_scoped_and_cached(bearer: tuple[Proc, TokenServer]) -> None:
    proc, server = bearer
    creds = Credentials.basic("alice", PASSWORD, source="$REG_PW")
    async with RegistryClient(proc.url, credentials=creds, backoff=0.01) as c:
        d = await c.push_blob("t/bearer", b"bearer-blob")
        pushes = [r["scopes"] for r in server.requests]
        assert pushes == [["repository:t/bearer:pull,push"]]  # one token, reused for the upload
        server.requests.clear()
        assert await c.blob_size("t/bearer", d.digest) == len(b"bearer-blob")
        got = bytearray()
        await c.fetch_blob("t/bearer", d.digest, sink=got.extend)
        assert bytes(got) == b"bearer-blob"
        # Reads ask for pull only, once: the token is cached for its scope.
        assert [r["scopes"] for r in server.requests] == [["repository:t/bearer:pull"]]
        assert all(r["auth"] for r in server.requests)


async def test_bearer_refusals_are_one_clear_line(
    bearer: tuple[Proc, TokenServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proc, _ = bearer
    bad = Credentials.basic("alice", "not-" + PASSWORD, source="$REG_PW")
    async with RegistryClient(proc.url, credentials=bad, backoff=0.01) as c:
        with pytest.raises(Unauthorized, match=r"refused credentials from \$REG_PW") as err:
            await c.get_manifest("t/bearer", "latest")
    text = str(err.value)
    assert "\n" not in text and "repository:t/bearer:pull" in text
    for t in (text, repr(err.value), caplog.text):
        assert PASSWORD not in t


async def test_expired_token_is_renewed(bearer: tuple[Proc, TokenServer]) -> None:
    proc, server = bearer
    creds = Credentials.basic("alice", PASSWORD)
    async with RegistryClient(proc.url, credentials=creds, backoff=0.01) as c:
        await c.ping()
        server.requests.clear()
        c._tokens._clock = lambda: time.monotonic() + 10_000  # every cached token now stale
        await c.ping()
    assert len(server.requests) == 1


def test_inspect_cli_401_then_docker_config_credentials(
    basic_registry: Proc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from warmer.cli.inspect import inspect_command

    async def seed() -> str:
        creds = Credentials.basic("alice", PASSWORD)
        async with RegistryClient(basic_registry.url, credentials=creds) as c:
            cfg = await c.push_blob("t/cli-auth", b'{"os":"linux","architecture":"amd64"}')
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": cfg.digest,
                        "size": cfg.size,
                    },
                    "layers": [],
                }
            ).encode()
            return await c.put_manifest(
                "t/cli-auth", "v1", body, "application/vnd.oci.image.manifest.v1+json"
            )

    digest = asyncio.run(seed())
    host = basic_registry.url.removeprefix("http://")
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    args = [f"{host}/t/cli-auth:v1", "--via", basic_registry.url]
    out = CliRunner().invoke(inspect_command, args)
    assert out.exit_code == 1 and out.output.count("\n") == 1
    assert "unauthorized" in out.output and "Traceback" not in out.output

    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    out = CliRunner().invoke(inspect_command, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["digest"] == digest
    assert PASSWORD not in out.output and token not in out.output


async def test_parallel_requests_share_one_token(bearer: tuple[Proc, TokenServer]) -> None:
    proc, server = bearer
    creds = Credentials.basic("alice", PASSWORD)
    async with RegistryClient(proc.url, credentials=creds, backoff=0.01) as c:
        descs = [await c.push_blob("t/par", f"blob {i}".encode()) for i in range(6)]
    server.requests.clear()
    async with RegistryClient(proc.url, credentials=creds, backoff=0.01) as fresh:
        sizes = await asyncio.gather(*(fresh.blob_size("t/par", d.digest) for d in descs))
    assert sizes == [d.size for d in descs]
    assert [r["scopes"] for r in server.requests] == [["repository:t/par:pull"]]
