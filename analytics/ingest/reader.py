"""Streaming reader: plain, gzip and zstd files as blocks of clean, complete lines.

Memory stays constant: the file is read in blocks of ``BLOCK`` bytes; a line longer than
``MAX_LINE`` is dropped and counted without being held whole. Each block is checked in C
(``isascii``, ``translate``, ``decode``) and only a block that fails the check is split
into lines to drop the invalid UTF-8 and binary ones, so clean logs stay on the fast path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

BLOCK = 1 << 20
MAX_LINE = 64 << 10
HEAD = 1024  # bytes hashed to fingerprint a file (see analytics.store bookkeeping)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Bytes allowed in a text line: printable ASCII, tab, CR, VT, FF, ESC (ANSI colours) and
# every byte >= 0x80 (UTF-8 validity is checked separately).
_ALLOWED = bytes([9, 10, 11, 12, 13, 27, *range(32, 127), *range(128, 256)])


@dataclass
class ReadStats:
    """What was read and what was skipped (never fatal)."""

    bytes: int = 0
    lines: int = 0
    invalid_utf8: int = 0
    binary: int = 0
    too_long: int = 0
    malformed: int = 0  # matched an event pattern but could not be parsed

    @property
    def skipped(self) -> int:
        return self.invalid_utf8 + self.binary + self.too_long + self.malformed

    def add(self, other: ReadStats) -> None:
        for name in ("bytes", "lines", "invalid_utf8", "binary", "too_long", "malformed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {
            "bytes": self.bytes,
            "lines": self.lines,
            "invalid_utf8": self.invalid_utf8,
            "binary": self.binary,
            "too_long": self.too_long,
            "malformed": self.malformed,
        }


def compression(path: Path) -> str | None:
    """``gzip``, ``zstd`` or None, from the file's magic bytes (not its name)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


def open_stream(path: Path) -> BinaryIO:
    """The decompressed byte stream of ``path``."""
    return open_file(path)[0]


def open_file(path: Path) -> tuple[BinaryIO, str | None, float]:
    """The decompressed byte stream of ``path``, its compression and its mtime.

    One ``open`` per file (the magic bytes are peeked from the same buffer): a walk over
    tens of thousands of small logs pays per system call.
    """
    raw = open(path, "rb")  # noqa: SIM115 - returned, or closed through the wrapper
    try:
        mtime = os.fstat(raw.fileno()).st_mtime
        magic = raw.peek(4)[:4]
        if magic.startswith(_GZIP_MAGIC):
            raw.close()  # GzipFile does not close a file object it was given
            return gzip.open(path, "rb"), "gzip", mtime  # type: ignore[return-value]
        if magic.startswith(_ZSTD_MAGIC):
            reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
            return io.BufferedReader(reader), "zstd", mtime
    except BaseException:
        raw.close()
        raise
    return raw, None, mtime


def skip(stream: BinaryIO, count: int, plain: bool) -> tuple[bytes, int]:
    """Advance ``stream`` to ``count`` bytes past its position (absolute for a plain file).

    Returns the last ``HEAD`` bytes before the new position and how many bytes were really
    there (less than asked when the stream is shorter). A plain file seeks; a compressed
    stream is read through (seeking in gzip would decompress from the start again).
    """
    if count <= 0:
        return b"", 0
    if plain:
        tail_from = max(0, count - HEAD)
        stream.seek(tail_from)
        tail = stream.read(count - tail_from)
        return tail, tail_from + len(tail)
    left = count
    tail = b""
    while left > 0:
        chunk = stream.read(min(BLOCK, left))
        if not chunk:
            break
        left -= len(chunk)
        tail = (tail + chunk)[-HEAD:]
    return tail, count - left


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class BlockReader:
    """Yields blocks of whole, valid lines from ``stream``; counts what it drops."""

    stream: BinaryIO
    stats: ReadStats = field(default_factory=ReadStats)
    block_size: int = BLOCK
    max_line: int = MAX_LINE
    prefix: bytes = b""  # bytes already read from the stream, to be processed first
    consumed: int = 0  # bytes consumed, prefix included (offset bookkeeping)
    last: bytes = b""  # the last HEAD bytes consumed (fingerprint at the new offset)

    def _chunks(self) -> Iterator[bytes]:
        if self.prefix:
            yield self.prefix
        read = self.stream.read
        while True:
            data = read(self.block_size)
            if not data:
                return
            yield data

    def __iter__(self) -> Iterator[bytes]:
        carry = b""
        dropping = False  # inside an over-long line: discard up to the next newline
        for data in self._chunks():
            self.stats.bytes += len(data)
            self.consumed += len(data)
            self.last = data[-HEAD:] if len(data) >= HEAD else (self.last + data)[-HEAD:]
            if dropping:
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                data = data[nl + 1 :]
                dropping = False
            buf = carry + data if carry else data
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                if len(carry) > self.max_line:
                    self.stats.too_long += 1
                    carry, dropping = b"", True
                continue
            block, carry = buf[: cut + 1], buf[cut + 1 :]
            if len(carry) > self.max_line:
                self.stats.too_long += 1
                carry, dropping = b"", True
            self.stats.lines += block.count(b"\n")
            clean = self._clean(block)
            if clean:
                yield clean
        if carry and not dropping:
            self.stats.lines += 1
            clean = self._clean(carry + b"\n")
            if clean:
                yield clean

    def _clean(self, block: bytes) -> bytes:
        if self._has_long_line(block):
            return self._slow(block)
        if block.isascii():
            if block.translate(None, _ALLOWED):
                return self._slow(block)
            return block
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return self._slow(block)
        if block.translate(None, _ALLOWED):
            return self._slow(block)
        return block

    def _has_long_line(self, block: bytes) -> bool:
        # A line of max_line bytes or more contains a whole aligned window of max_line/2
        # bytes, so a window without a newline flags the block for the exact slow path.
        # A few memchr calls per block instead of a Python loop over every line.
        if len(block) <= self.max_line:
            return False
        w = self.max_line // 2
        find = block.find
        return any(find(b"\n", i, i + w) < 0 for i in range(0, len(block) - w + 1, w))

    def _slow(self, block: bytes) -> bytes:
        keep: list[bytes] = []
        stats = self.stats
        for line in block.split(b"\n")[:-1]:
            if len(line) > self.max_line:
                stats.too_long += 1
                continue
            if line.translate(None, _ALLOWED):
                stats.binary += 1
                continue
            if not line.isascii():
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    stats.invalid_utf8 += 1
                    continue
            keep.append(line)
        if not keep:
            return b""
        keep.append(b"")
        return b"\n".join(keep)


def file_size(path: Path) -> int:
    return os.stat(path).st_size
