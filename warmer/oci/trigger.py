"""A GET sent and its connection closed in one step, its answer never read.

Hand-written because an HTTP client closes a connection only after reading an answer's
headers, or from the event loop's next turn after a timeout: in a busy run (blobs hashed
as they stream) that took tens of ms, in which a pull-through mirror relays megabytes into
the connection before it notices (measured on distribution 2.8 at 100 MB/s: 1.6 MB blobs
sent whole). Here the request's last bytes and the close are one synchronous step, so the
mirror's first write of its answer meets a closed connection (measured: 32-115 kB of
1.6-42 MB blobs crossed its parent link for nothing). TLS is spoken through a memory BIO
for the same reason (the handshake is awaited; the encrypted request and the close are
not).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Mapping

import httpx

_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: no CR, LF or NUL
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")


class TriggerError(OSError):
    """The request could not be sent (connection or TLS)."""


class UnfitHeader(ValueError):
    """A header value that would change the request (CR, LF, NUL ...): never sent."""


def request_bytes(url: httpx.URL, headers: Mapping[str, str]) -> bytes:
    """Pure: the HTTP/1.1 GET for ``url`` with ``headers``, ``Connection: close``."""
    lines = [f"GET {url.raw_path.decode('ascii')} HTTP/1.1", f"Host: {url.netloc.decode('ascii')}"]
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise UnfitHeader(f"header {name!r} is not fit to send")  # never its value
        lines.append(f"{name}: {value}")
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii")


async def send_and_close(
    url: httpx.URL,
    headers: Mapping[str, str],
    *,
    tls: ssl.SSLContext | None,
    timeout: float,
) -> None:
    """Connect to ``url``'s host, send a GET for it and close the connection at once."""
    payload = request_bytes(url, headers)
    https = url.scheme == "https"
    if https and tls is None:
        raise TriggerError("an https URL needs a TLS context")
    port = url.port or (443 if https else 80)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
            if not infos:
                raise TriggerError(f"{url.host}: no address")
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                if https:
                    assert tls is not None
                    payload = await _tls_records(loop, sock, tls, url.host, payload)
                # One step from here: a short request fits a fresh socket's buffer.
                sent = sock.send(payload)
                if sent < len(payload):
                    await loop.sock_sendall(sock, payload[sent:])
            finally:
                sock.close()
    except TimeoutError:
        raise TriggerError(f"no connection within {timeout:.0f}s") from None
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, TriggerError):
            raise
        raise TriggerError(type(exc).__name__) from None


async def _tls_records(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    context: ssl.SSLContext,
    host: str,
    payload: bytes,
) -> bytes:
    """Do the TLS handshake on ``sock``; return the records that carry ``payload``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                await loop.sock_sendall(sock, pending)
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise TriggerError("TLS handshake: connection closed") from None
            incoming.write(data)
    tls.write(payload)
    return outgoing.read()
