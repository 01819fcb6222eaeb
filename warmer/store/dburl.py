"""Database URLs: checked before an engine is made, shown with the password masked, and the
errors of opening one turned into one line that names it.

Two kinds of failure, as the CLI reports them: a URL that cannot name a usable database
(garbage, a scheme the warmer does not speak) is :class:`DatabaseURLError`, bad input; a
good URL whose database cannot be reached or written (PostgreSQL down, a SQLite path in a
read-only or missing place) is :class:`DatabaseUnavailable`, failed work.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: Schemes the warmer speaks: SQLite (the default) and PostgreSQL through psycopg 3.
SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")
# Up to the last "@" of the URL: a password may hold "@", "/" or "#" unescaped, and masking
# too much (an "@" in a query) is the safe way to be wrong.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"]*)@")


class DatabaseURLError(ValueError):
    """A database URL that names no usable database (bad input)."""


class DatabaseUnavailable(RuntimeError):
    """A good database URL whose database cannot be opened, reached or written (failed work)."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also in text that holds URLs); a user
    name alone is masked too (it may be a token)."""

    def masked(m: re.Match[str]) -> str:
        user, sep, _ = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:***@" if sep and "/" not in user else f"{m['scheme']}***@"

    return _USERINFO.sub(masked, url)


def _password(url: str) -> str | None:
    match = _USERINFO.search(url)
    secret = match["userinfo"].partition(":")[2] if match else ""
    return secret or None


def check_url(url: object) -> str:
    """The URL as the engine takes it (``postgresql://`` gets the psycopg 3 driver), or
    :class:`DatabaseURLError` naming it (masked) and why."""
    if not isinstance(url, str):
        raise DatabaseURLError(f"database url {url!r}: not a string")
    shown = mask_url(url)
    if not url.strip():
        raise DatabaseURLError("database url is empty (e.g. sqlite:///warmer.db)")
    if any(c in url for c in "\r\n\0"):
        raise DatabaseURLError(f"database url {shown!r}: contains a control character")
    try:
        parsed: URL = make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseURLError(
            f"database url {shown!r}: not a URL (e.g. sqlite:///warmer.db, "
            "postgresql://USER@HOST/DB)"
        ) from None
    scheme = parsed.drivername
    if scheme not in SCHEMES:
        raise DatabaseURLError(
            f"database url {shown!r}: unsupported scheme {scheme!r} (use sqlite:///PATH or "
            "postgresql://USER@HOST/DB)"
        )
    if scheme == "sqlite":
        if parsed.host or parsed.username or parsed.port:
            raise DatabaseURLError(
                f"database url {shown!r}: a SQLite URL names a file (sqlite:///relative.db, "
                "sqlite:////absolute/path.db), not a host"
            )
        return url
    if not parsed.database:
        raise DatabaseURLError(f"database url {shown!r}: names no database (…/DBNAME)")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise DatabaseURLError(f"database url {shown!r}: port {parsed.port} is out of range")
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def sqlite_path(url: str) -> str | None:
    """The file a SQLite URL names; None for PostgreSQL and in-memory databases."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return path if path and path != ":memory:" and not path.startswith("file:") else None


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """:class:`DatabaseUnavailable` naming ``url`` (masked) and, in one line, why."""
    reason = getattr(exc, "orig", None) or exc
    if isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror + (f": {reason.filename}" if reason.filename else "")
    else:
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
        text = text or type(reason).__name__
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    text = mask_url(text)
    where = "open" if url.startswith("sqlite") else "connect to"
    return DatabaseUnavailable(f"database {mask_url(url)}: cannot {where} it: {text}")
