"""Docker Hub's rate-limit headers, parsed into one value.

Docker Hub answers every manifest request with headers such as::

    ratelimit-limit: 100;w=21600
    ratelimit-remaining: 76;w=21600
    docker-ratelimit-source: 203.0.113.7

(``w`` is the window in seconds). The value is a plain ``int;w=seconds`` pair, close to
the IETF RateLimit draft's older syntax; the parser is hand-written because no maintained
package reads this exact form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# ASCII digits, at most 12 of them (a quota or window of more is not believed); used with
# ``fullmatch``. Whatever else a proxy or a hostile registry sends reads as "no value".
_VALUE_RE = re.compile(
    r"[ \t]*([0-9]{1,12})[ \t]*(?:;[ \t]*w[ \t]*=[ \t]*([0-9]{1,12})[ \t]*)?(?:;[^\r\n]*)?",
    re.ASCII,
)
# What docker-ratelimit-source may hold (an address or an account id); else it is dropped.
_SOURCE_RE = re.compile(r"[0-9A-Za-z.:_-]{1,64}", re.ASCII)


@dataclass(frozen=True)
class RateLimit:
    """What the last response said about the caller's pull quota."""

    limit: int | None
    window_seconds: int | None
    remaining: int | None
    remaining_window: int | None
    source: str | None

    def __str__(self) -> str:
        def part(value: int | None, window: int | None) -> str:
            if value is None:
                return "?"
            return f"{value}" + (f" per {window}s" if window else "")

        text = f"remaining {part(self.remaining, self.remaining_window)}"
        text += f" of {part(self.limit, self.window_seconds)}"
        if self.source:
            text += f" (source {self.source})"
        return text


def _parse_value(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    # Some proxies join repeated headers with commas; the first entry is the quota.
    first = text.split(",", 1)[0]
    m = _VALUE_RE.fullmatch(first)
    if m is None:
        return None, None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def parse_ratelimit(headers: Mapping[str, str]) -> RateLimit | None:
    """Read the rate-limit headers of a response; ``None`` when it carries none.

    ``headers`` may be an ``httpx.Headers`` (case-insensitive) or a plain dict, whose keys
    are then matched case-insensitively.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    limit_text = lowered.get("ratelimit-limit")
    remaining_text = lowered.get("ratelimit-remaining")
    source = lowered.get("docker-ratelimit-source")
    if limit_text is None and remaining_text is None:
        return None
    limit, window = _parse_value(limit_text)
    remaining, remaining_window = _parse_value(remaining_text)
    if limit is None and remaining is None:
        return None
    return RateLimit(
        limit=limit,
        window_seconds=window,
        remaining=remaining,
        remaining_window=remaining_window,
        source=source.strip() if source and _SOURCE_RE.fullmatch(source.strip()) else None,
    )
