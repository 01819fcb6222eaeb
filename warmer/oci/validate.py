"""Values a registry sends, checked before anything uses, stores, logs or runs them.

A registry (or anything posing as one) chooses every header and every byte of JSON it sends.
Nothing from it is used as is: a digest must be one this tool can verify, a size a
non-negative integer within reason, a media type an RFC 6838 name, a repository or tag the
reference grammar's, a URL http(s). Each ``check_*`` returns the value (normalised where
said) or raises :class:`InvalidValue`, and nothing else, whatever it is given.

Pure: no I/O, no httpx (the reference parser's grammar is shared, not copied).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from warmer.oci.reference import NAME_TOTAL_LENGTH_MAX, is_repository_path, is_tag

#: The largest size believed (1 TiB): a blob or manifest claiming more is a lie or an attack.
MAX_SIZE = 1 << 40
#: How much of a rejected value an error message shows.
SHOWN = 80
MAX_URL = 8192
MAX_PARAM = 1024

_DIGESTS = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
# RFC 6838 section 4.2: restricted-name = restricted-name-first *126restricted-name-chars
# (a +suffix is part of the subtype's characters).
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}", re.ASCII)
_SIZE_TEXT = re.compile(r"[0-9]{1,16}", re.ASCII)
# Visible ASCII only: no space, no control character, nothing a terminal or shell reads.
_VISIBLE = re.compile(r"[\x21-\x7e]+", re.ASCII)


class InvalidValue(ValueError):
    """A value from a registry that fails its grammar; ``str()`` is one line and shows the
    value escaped and truncated (``repr``), so a newline or escape sequence in it is inert."""

    def __init__(self, what: str, value: object, why: str) -> None:
        super().__init__(f"invalid {what} {shown(value)}: {why}")
        self.what = what
        self.why = why


def shown(value: object) -> str:
    """``value`` fit for a one-line message: its ``repr``, cut to :data:`SHOWN` characters."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails is shown as its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def check_digest(value: object, what: str = "digest") -> str:
    """``sha256:`` + 64 or ``sha512:`` + 128 lower-case hex: the digests this tool can verify."""
    if not isinstance(value, str):
        raise InvalidValue(what, value, "not a string")
    algorithm, colon, encoded = value.partition(":")
    pattern = _DIGESTS.get(algorithm)
    if not colon or pattern is None:
        raise InvalidValue(what, value, "not sha256:<hex> or sha512:<hex>")
    if not pattern.fullmatch(encoded):
        n = 64 if algorithm == "sha256" else 128
        raise InvalidValue(what, value, f"a {algorithm} digest is {n} lower-case hex characters")
    return value


def is_digest(value: object) -> bool:
    try:
        check_digest(value)
    except InvalidValue:
        return False
    return True


def check_size(value: object, what: str = "size") -> int:
    """An ``int`` (not a bool, float or string) in ``[0, MAX_SIZE]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(what, value, "not an integer")
    if value < 0:
        raise InvalidValue(what, value, "negative")
    if value > MAX_SIZE:
        raise InvalidValue(what, value, f"more than {MAX_SIZE} bytes")
    return value


def check_size_text(value: object, what: str = "Content-Length") -> int:
    """A size written in a header: ASCII digits only, then :func:`check_size`."""
    if not isinstance(value, str) or not _SIZE_TEXT.fullmatch(value.strip()):
        raise InvalidValue(what, value, "not a non-negative decimal integer")
    return check_size(int(value.strip()), what)


def check_media_type(value: object, what: str = "media type", *, parameters: bool = False) -> str:
    """An RFC 6838 ``type/subtype[+suffix]`` name, lower-cased.

    With ``parameters`` (a Content-Type header) ``; charset=...`` and the like are stripped;
    without (a descriptor's mediaType) they are refused.
    """
    if not isinstance(value, str):
        raise InvalidValue(what, value, "not a string")
    text = value
    if ";" in text:
        if not parameters:
            raise InvalidValue(what, value, "parameters are not allowed here")
        text = text.split(";", 1)[0]
    text = text.strip(" \t")
    if not _MEDIA_TYPE.fullmatch(text):
        raise InvalidValue(what, value, "not an RFC 6838 type/subtype")
    return text.lower()


def check_content_type(value: str | None, what: str = "Content-Type") -> str:
    """A Content-Type header's media type without parameters; ``""`` when absent or empty."""
    if value is None or not value.strip():
        return ""
    return check_media_type(value, what, parameters=True)


def check_repository(value: object, what: str = "repository name") -> str:
    """A repository path as the reference grammar has it (``library/ubuntu``)."""
    if not isinstance(value, str):
        raise InvalidValue(what, value, "not a string")
    if len(value) > NAME_TOTAL_LENGTH_MAX or not is_repository_path(value):
        raise InvalidValue(
            what, value, "not lower-case components of letters and digits joined by / . _ -"
        )
    return value


def check_tag(value: object, what: str = "tag") -> str:
    """A tag as the reference grammar has it: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``."""
    if not isinstance(value, str):
        raise InvalidValue(what, value, "not a string")
    if not is_tag(value):
        raise InvalidValue(what, value, "not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
    return value


def check_url(value: object, what: str = "URL") -> str:
    """An absolute ``http(s)://host...`` URL of visible ASCII, without user info."""
    if not isinstance(value, str):
        raise InvalidValue(what, value, "not a string")
    if len(value) > MAX_URL or not _VISIBLE.fullmatch(value):
        raise InvalidValue(what, value, "not a URL of visible ASCII characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        raise InvalidValue(what, value, "not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidValue(what, value, "not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue(what, value, "a URL must not carry user info")
    return value


def check_param(value: object, what: str) -> str:
    """A short printable string (an auth challenge's service or scope): visible ASCII and
    single spaces, at most :data:`MAX_PARAM` characters."""
    if not isinstance(value, str):
        raise InvalidValue(what, value, "not a string")
    if (
        not value
        or len(value) > MAX_PARAM
        or not all(_VISIBLE.fullmatch(p) for p in value.split(" "))
    ):
        raise InvalidValue(what, value, "not a short string of visible ASCII characters")
    return value


def check_token(value: object, what: str = "token") -> str:
    """A bearer token as a header can carry it. The message never shows the value."""
    if not isinstance(value, str) or not value:
        raise InvalidValue(what, type(value).__name__, "not a non-empty string")
    if len(value) > 64 * 1024 or not _VISIBLE.fullmatch(value):
        raise InvalidValue(what, "<withheld>", "not visible ASCII characters (at most 64 KiB)")
    return value
