"""Finding the lines of a block that contain any of a parser's keywords.

This is the hot loop of ingest: every byte of every log passes through it, and only the few
selected lines are decoded and parsed. Hyperscan (the ``hyperscan`` package, Intel's
multi-literal matcher) finds all keywords in one SIMD pass; without it, one ``bytes.find``
pass per keyword does the same at a fraction of the speed (about 20 passes for a CI log).
Both give exactly the same spans: each line once, in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_hs: Any
try:  # optional at import so a platform without wheels still ingests, only slower
    import hyperscan as _hs
except ImportError:  # pragma: no cover - the dependency is installed with the project
    _hs = None

Spans = list[tuple[int, int]]


def select_find(block: bytes, keywords: tuple[bytes, ...]) -> Spans:
    """Spans of the lines of ``block`` containing any keyword, in order, each once."""
    spans: dict[int, int] = {}
    find, rfind = block.find, block.rfind
    for kw in keywords:
        pos = find(kw)
        while pos >= 0:
            start = rfind(b"\n", 0, pos) + 1
            end = find(b"\n", pos)
            if end < 0:
                end = len(block)
            spans[start] = end
            pos = find(kw, end + 1)
    return sorted(spans.items())


class _Hyperscan:
    """One compiled database per keyword set; matches arrive in end-offset order."""

    def __init__(self, keywords: tuple[bytes, ...]) -> None:
        assert _hs is not None and not any(b"\n" in k for k in keywords)
        self.db: Any = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        self.db.compile(
            expressions=[re.escape(k) for k in keywords],
            ids=list(range(len(keywords))),
            elements=len(keywords),
            flags=[0] * len(keywords),
        )

    def __call__(self, block: bytes) -> Spans:
        ends: list[int] = []
        self.db.scan(block, match_event_handler=lambda _id, _s, end, _f, _c: ends.append(end))
        ends.sort()  # Hyperscan reports by end offset already; cheap insurance
        spans: Spans = []
        line_end = -1
        find, rfind = block.find, block.rfind
        for end in ends:  # ascending; several matches on one line collapse to one span
            if end <= line_end:
                continue
            start = rfind(b"\n", 0, end) + 1
            line_end = find(b"\n", end)
            if line_end < 0:
                line_end = len(block)
            spans.append((start, line_end))
        return spans


_CACHE: dict[tuple[bytes, ...], Callable[[bytes], Spans]] = {}


def selector(keywords: tuple[bytes, ...], fast: bool = True) -> Callable[[bytes], Spans]:
    """A function ``block -> spans`` for ``keywords`` (compiled once per keyword set)."""
    if not fast or _hs is None or not keywords:
        return lambda block: select_find(block, keywords)
    sel = _CACHE.get(keywords)
    if sel is None:
        sel = _CACHE[keywords] = _Hyperscan(keywords)
    return sel


_ENDS_CACHE: dict[tuple[bytes, ...], Callable[[bytes], list[int]]] = {}


def line_ends(patterns: tuple[bytes, ...], fast: bool = True) -> Callable[[bytes], list[int]]:
    """A function ``block -> the end offsets (the newline's) of the lines where one of
    ``patterns`` matches``, ascending, each once.

    Each pattern must run to the end of its line (``...[^\\n]*$``, a syntax both ``re`` and
    Hyperscan accept, ``$`` at a line end): then every match of a line ends at its newline,
    Hyperscan reports it once, and no line start has to be searched for.
    """
    sel = _ENDS_CACHE.get(patterns) if fast else None
    if sel is not None:
        return sel
    if not fast or _hs is None:
        compiled = re.compile(b"|".join(b"(?:%s)" % p for p in patterns), re.MULTILINE)

        def slow(block: bytes) -> list[int]:
            return sorted({m.end() for m in compiled.finditer(block)})

        return slow
    db: Any = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    db.compile(
        expressions=list(patterns),
        ids=list(range(len(patterns))),
        elements=len(patterns),
        flags=[_hs.HS_FLAG_MULTILINE] * len(patterns),
    )

    def fast_ends(block: bytes) -> list[int]:
        ends: list[int] = []
        db.scan(block, match_event_handler=lambda _i, _s, end, _f, _c: ends.append(end))
        if len(patterns) > 1:
            ends = sorted(set(ends))
        return ends

    _ENDS_CACHE[patterns] = fast_ends
    return fast_ends


def literal_set(
    literals: list[bytes], regexes: dict[str, bytes] | None = None
) -> Callable[[bytes], set[str]]:
    """A function ``data -> the names found in it``: each literal (named by its text) and
    each named regex (bytes syntax both ``re`` and Hyperscan accept), in one pass."""
    regexes = regexes or {}
    names = [lit.decode() for lit in literals] + list(regexes)
    if _hs is None:
        compiled = {name: re.compile(rx) for name, rx in regexes.items()}

        def slow(data: bytes) -> set[str]:
            found = {lit.decode() for lit in literals if lit in data}
            return found | {name for name, rx in compiled.items() if rx.search(data)}

        return slow
    db: Any = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    exprs = [re.escape(lit) for lit in literals] + list(regexes.values())
    db.compile(
        expressions=exprs,
        ids=list(range(len(exprs))),
        elements=len(exprs),
        flags=[_hs.HS_FLAG_SINGLEMATCH] * len(exprs),
    )

    def fast(data: bytes) -> set[str]:
        found: set[str] = set()
        db.scan(data, match_event_handler=lambda i, _s, _e, _f, _c: found.add(names[i]))
        return found

    return fast
