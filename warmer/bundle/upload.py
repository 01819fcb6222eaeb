"""Upload a blob to a registry from a file-like object, in bounded chunks.

:meth:`warmer.registry.RegistryClient.push_blob` takes the whole blob as ``bytes``; a
multi-gigabyte layer from a bundle must not be read into memory, so this streams it with
the chunked upload protocol (POST, PATCH per chunk, PUT ?digest). It goes through the
client's transport (``_call``: authentication, redirects, status mapping) rather than a
second HTTP stack. PATCHes are not retried blindly (the session offset moves); a failed
upload is simply started again by the next import, which is idempotent.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import IO

from warmer.auth import repository_scope
from warmer.registry import RegistryClient

UPLOAD_CHUNK = 16 * 1024 * 1024


async def push_blob_stream(
    client: RegistryClient,
    repository: str,
    digest: str,
    size: int,
    stream: IO[bytes],
    chunk_size: int = UPLOAD_CHUNK,
    on_bytes: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Upload ``size`` bytes read from ``stream`` as blob ``digest`` of ``repository``.

    The registry checks the digest when the upload is closed and refuses a mismatch.
    """
    scopes = [repository_scope(repository, "pull", "push")]
    what = f"blob upload {repository}@{digest}"
    blobs_path = f"/v2/{repository}/blobs/uploads/"
    octet = {"Content-Type": "application/octet-stream"}
    resp = await client._call("POST", blobs_path, scopes, what, ok=(202,))
    location = client._location(resp, what)
    if size <= chunk_size:
        # Small blob: one PUT carrying the bytes closes the session.
        data = stream.read()
        await client._call(
            "PUT",
            location,
            scopes,
            what,
            ok=(201,),
            headers=octet,
            content=data,
            params={"digest": digest},
        )
        if on_bytes is not None:
            await on_bytes(len(data))
        return
    offset = 0
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        n = len(chunk)
        headers = {**octet, "Content-Range": f"{offset}-{offset + n - 1}"}
        resp = await client._call(
            "PATCH",
            location,
            scopes,
            what,
            ok=(202,),
            headers=headers,
            content=chunk,
            retry=False,
        )
        location = client._location(resp, what)
        offset += n
        # httpx keeps a Response <-> stream reference cycle that holds the request body
        # until the cycle collector runs: without this, a 1 GiB layer could sit in memory
        # as dozens of dead 16 MiB chunks. A young-generation collection is enough.
        del chunk, resp
        gc.collect(1)
        if on_bytes is not None:
            await on_bytes(n)
    await client._call(
        "PUT",
        location,
        scopes,
        what,
        ok=(201,),
        headers=octet,
        content=b"",
        params={"digest": digest},
    )
