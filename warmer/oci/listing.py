"""Listing a registry: a repository's tags and the registry's catalog, paged.

The base of :class:`warmer.oci.registry.RegistryClient`: every page is checked (JSON, the
grammar of each tag and repository name) and a next page is only followed on the same
registry, at most ``MAX_TAG_PAGES`` of them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from warmer.oci.auth import repository_scope
from warmer.oci.transport import (
    InvalidResponse,
    RegistryError,
    RegistryTransport,
    safe_url,
)
from warmer.oci.validate import InvalidValue, check_repository, check_tag

MAX_TAG_PAGES = 1000


class RegistryListing(RegistryTransport):
    """Tags and catalog of the registry at ``url`` (see the module)."""

    def _path(self, repository: str, kind: str, reference: str = "") -> str:
        return f"/v2/{repository}/{kind}/{reference}"

    async def list_tags(self, repository: str, *, page_size: int | None = None) -> list[str]:
        """All tags, following ``Link: <...>; rel="next"`` pagination (``n=page_size``)."""
        tags: list[str] = []
        first = self._path(repository, "tags", "list")
        path = f"{first}?n={page_size}" if page_size else first
        what = f"tags of {repository}"
        async for resp in self._pages(path, [repository_scope(repository, "pull")], what):
            tags.extend(self._tag_page(resp, what))
        return tags

    async def _pages(
        self, path: str, scopes: list[str], what: str
    ) -> AsyncIterator[httpx.Response]:
        """GET ``path`` and each ``Link: <...>; rel="next"`` page after it, on this registry
        only, at most ``MAX_TAG_PAGES`` of them."""
        nxt: str | None = path
        for _ in range(MAX_TAG_PAGES):
            if nxt is None:
                return
            resp = await self._call("GET", nxt, scopes, what)
            yield resp
            link = resp.links.get("next", {}).get("url")
            nxt = None
            if link:
                url = self.follow(resp, link, what)
                if not self._same_origin(url):
                    raise InvalidResponse(
                        f"{what}: {self.url} sent a next page at another host ({safe_url(url)})"
                    )
                nxt = str(url)
        raise RegistryError(f"{what}: more than {MAX_TAG_PAGES} pages")

    def _json_page(self, resp: httpx.Response, what: str, key: str, kind: str) -> Any:
        """One page's JSON object and its ``key`` list (None when absent), or
        InvalidResponse naming the registry."""
        try:
            data = json.loads(resp.content)
        except (ValueError, RecursionError):
            raise InvalidResponse(f"{what}: {self.url} sent something other than JSON") from None
        page = data.get(key) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(page, list | None):
            raise InvalidResponse(f"{what}: {self.url} sent something other than {kind}")
        return data

    def _tag_page(self, resp: httpx.Response, what: str) -> list[str]:
        """The tags of one page of a tag list, each checked against the tag grammar."""
        data = self._json_page(resp, what, "tags", "a tag list")
        try:
            if data.get("name") is not None:
                check_repository(data["name"], "repository name")
            return [check_tag(t, "tag") for t in data.get("tags") or []]
        except InvalidValue as exc:
            raise self.invalid(what, exc) from None

    async def catalog(self, *, page_size: int = 1000) -> list[str]:
        """The repositories the registry lists (``GET /v2/_catalog``, paged). A pull-through
        CNCF distribution lists the repositories in its own storage (measured on 2.8): what
        a wiped or replaced cache lost shows here without asking its parent for anything."""
        names: list[str] = []
        what = "repository catalog"
        path = f"/v2/_catalog?n={page_size}"
        async for resp in self._pages(path, ["registry:catalog:*"], what):
            data = self._json_page(resp, what, "repositories", "a catalog")
            try:
                names += [
                    check_repository(n, "repository name") for n in data.get("repositories") or []
                ]
            except InvalidValue as exc:
                raise self.invalid(what, exc) from None
        return names
