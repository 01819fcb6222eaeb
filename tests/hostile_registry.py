"""A hostile registry for tests: a real HTTP server on a 127.0.0.1 socket whose every answer
the test chooses, for what a real CNCF distribution registry never sends (malformed digests,
sizes and JSON, odd headers, redirects to other hosts, odd token answers).

``HostileRegistry()`` starts a threaded ``http.server`` on a free port (stop it with
``stop()``, or use it as a context manager). Answers are looked up by ``(method, path)``
(the path without its query); a value is an :class:`Answer` or a function of the
:class:`Seen` request returning one. :meth:`HostileRegistry.image` registers a valid image
(config, one layer, manifest by tag and digest, HEAD and GET) that a test then spoils one
answer of. Responses are written byte for byte (no header checks of http.server's own), so
a header can hold what a test wants, CR and LF included; each connection serves one answer
and closes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

Header = tuple[str, str | bytes]
#: What CNCF distribution's file server adds to a blob it serves from its own storage (the
#: warmer tells a stored blob from a relayed one by them).
STORED: list[Header] = [("Accept-Ranges", "bytes"), ("Cache-Control", "max-age=31536000")]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Answer:
    status: int = 200
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    #: Send a Content-Length of the body unless the headers name one.
    length: bool = True


@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # with its query
    headers: dict[str, str]  # lower-case names
    body: bytes


Route = Answer | Callable[[Seen], Answer]


def error(status: int, code: str, message: str = "") -> Answer:
    body = json.dumps({"errors": [{"code": code, "message": message or code}]}).encode()
    return Answer(status, [("Content-Type", "application/json")], body)


@dataclass
class Image:
    repository: str
    tag: str
    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def manifest_json(self, **changes: Any) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest)
        data.update(changes)
        return data


def manifest_body(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    data = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(x), "size": len(x)} for x in layers],
    }
    data.update(extra)
    return json.dumps(data).encode()


class HostileRegistry:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {("GET", "/v2/"): Answer(200, [], b"{}")}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with registry._lock:
                    registry.requests.append(seen)
                    route = registry.routes.get((self.command, self.path.split("?", 1)[0]))
                if route is None:
                    answer = error(404, "NAME_UNKNOWN", "not here")
                else:
                    answer = route if isinstance(route, Answer) else route(seen)
                self._write(answer)

            def _write(self, answer: Answer) -> None:
                reason = {200: b"OK", 201: b"Created", 202: b"Accepted"}.get(answer.status, b"X")
                out = [b"HTTP/1.1 %d %s\r\n" % (answer.status, reason)]
                names = set()
                for name, value in answer.headers:
                    names.add(name.lower())
                    raw = value if isinstance(value, bytes) else value.encode("utf-8")
                    out.append(name.encode("latin-1") + b": " + raw + b"\r\n")
                if answer.length and "content-length" not in names:
                    out.append(b"Content-Length: %d\r\n" % len(answer.body))
                out.append(b"Connection: close\r\n\r\n")
                if self.command != "HEAD":
                    out.append(answer.body)
                self.close_connection = True
                try:
                    self.wfile.write(b"".join(out))
                    self.wfile.flush()
                except OSError:  # the client gave up first: nothing to tell it
                    pass

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> HostileRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- routes ---------------------------------------------------------------------------

    def set(self, method: str, path: str, route: Route) -> None:
        with self._lock:
            self.routes[(method, path)] = route

    def both(self, path: str, route: Route) -> None:
        """The same answer to GET and HEAD (HEAD sends no body, same headers)."""
        self.set("GET", path, route)
        self.set("HEAD", path, route)

    def manifest(
        self,
        repository: str,
        reference: str,
        body: bytes,
        *,
        media_type: str | bytes = OCI_MANIFEST,
        digest: str | bytes | None = None,
        extra: list[Header] | None = None,
    ) -> None:
        """Answer GET and HEAD of a manifest (Docker-Content-Digest: its sha256 unless said)."""
        headers: list[Header] = [
            ("Content-Type", media_type),
            ("Docker-Content-Digest", sha256(body) if digest is None else digest),
            *(extra or []),
        ]
        self.both(f"/v2/{repository}/manifests/{reference}", Answer(200, headers, body))

    def blob(self, repository: str, data: bytes, extra: list[Header] | None = None) -> str:
        digest = sha256(data)
        headers: list[Header] = [
            ("Content-Type", "application/octet-stream"),
            ("Docker-Content-Digest", digest),
            *STORED,
            *(extra or []),
        ]
        self.both(f"/v2/{repository}/blobs/{digest}", Answer(200, headers, data))
        return digest

    def image(self, repository: str = "t/app", tag: str = "1.0", seed: str = "x") -> Image:
        """A valid single-platform image, served by tag and by digest, with its blobs."""
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}, "s": seed}
        ).encode()
        layer = hashlib.sha256(seed.encode()).digest() * 64
        body = manifest_body(config, [layer])
        self.blob(repository, config)
        self.blob(repository, layer)
        self.manifest(repository, tag, body)
        self.manifest(repository, sha256(body), body)
        return Image(repository, tag, config, layer, body)

    def seen(self, method: str | None = None, path_part: str = "") -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and path_part in r.path
            ]


@contextmanager
def hostile_registry() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    try:
        yield server
    finally:
        server.stop()
