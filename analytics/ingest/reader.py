"""Streaming reader: plain, gzip and zstd files as blocks of clean, complete lines.

Memory stays constant: the file is read in blocks of ``BLOCK`` bytes; a line longer than
``MAX_LINE`` is dropped and counted without being held whole. Each block is checked in C
(``isascii``, ``translate``, ``decode``) and only a block that fails the check is split
into lines to drop the invalid UTF-8 and binary ones, so clean logs stay on the fast path.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

BLOCK = 1 << 20
MAX_LINE = 64 << 10
HEAD = 1024  # bytes hashed to fingerprint a file (see analytics.store bookkeeping)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Bytes allowed in a text line: printable ASCII, tab, CR, VT, FF, ESC and BEL (ANSI colours;
# BEL ends the OSC and APC sequences terminals read, such as Buildkite's per-line time) and
# every byte >= 0x80 (UTF-8 validity is checked separately).
_ALLOWED = bytes([7, 9, 10, 11, 12, 13, 27, *range(32, 127), *range(128, 256)])


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


class NotRegularFile(Exception):
    """A FIFO, socket or device: never read (a FIFO would block the walk forever)."""

    def __init__(self, path: Path | str, kind: str) -> None:
        super().__init__(f"{path}: {kind}, not a regular file")
        self.kind = kind


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def open_regular(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """``path`` opened for reading, only when it is a regular file (else NotRegularFile).

    Opened non-blocking and checked with ``fstat`` before any read: a FIFO that appeared
    after the walk looked at it cannot hang the reader.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, file_kind(st.st_mode))
        os.set_blocking(fd, True)
        return open(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def compression(path: Path) -> str | None:
    """``gzip``, ``zstd`` or None, from the file's magic bytes (not its name)."""
    f, _ = open_regular(path)
    with f:
        magic = f.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


class Decompressed(io.RawIOBase):
    """The decompressed bytes of a gzip or zstd file, that stop at damage instead of raising.

    Every byte decoded before a truncation or a corruption is returned; then the stream
    ends and ``damage`` says what went wrong and where (compressed byte offset). Multiple
    gzip members and zstd frames are read one after the other, as ``gzip``/``zstd -d`` do.
    Output per step is bounded (gzip by ``max_length``, zstd by feeding it ``ZSTD_STEP``
    bytes at a time), so a decompression bomb streams instead of filling memory.
    """

    CHUNK = 256 << 10
    ZSTD_STEP = 512  # at most 128 RLE blocks of 128 KiB: 16 MiB out of one step

    def __init__(self, raw: BinaryIO, kind: str) -> None:
        super().__init__()
        self._raw, self.kind = raw, kind
        self._out = b""  # decompressed bytes not yet returned, from offset _at
        self._at = 0
        self._chunk = b""  # compressed bytes read from the file ...
        self._pos = 0  # ... of which this many were given to a decompressor
        self._dec: Any = None  # zlib or zstandard decompression object
        self._fed = 0  # compressed bytes read from the file
        self._done = False
        self.damage: str | None = None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()

    def _new(self) -> Any:
        if self.kind == "gzip":
            return zlib.decompressobj(wbits=31)  # gzip header and trailer (CRC, size) checked
        return zstandard.ZstdDecompressor().decompressobj()

    def _fill(self) -> None:
        while not self._out and not self._done:
            if self._pos >= len(self._chunk):
                self._chunk, self._pos = self._raw.read(self.CHUNK), 0
                self._fed += len(self._chunk)
                if not self._chunk:
                    self._done = True
                    if self._dec is not None and not self._dec.eof:
                        self.damage = (
                            f"truncated {self.kind} stream (ends at compressed byte {self._fed})"
                        )
                    return
            if self._dec is None or self._dec.eof:
                if self._dec is not None and not self._chunk[self._pos :].strip(b"\0"):
                    self._pos = len(self._chunk)  # zero padding after the last member
                    continue
                self._dec = self._new()
            self._step(self._dec)

    def _step(self, dec: Any) -> None:
        end = len(self._chunk)
        if self.kind == "zstd":
            end = min(end, self._pos + self.ZSTD_STEP)
        data = memoryview(self._chunk)[self._pos : end]
        try:
            if self.kind == "zstd":
                self._out = dec.decompress(data)
                left = len(dec.unused_data)
            else:
                self._out = dec.decompress(data, BLOCK)
                # At the member's end unconsumed_tail may still hold a stale value.
                left = len(dec.unused_data) if dec.eof else len(dec.unconsumed_tail)
        except (zlib.error, zstandard.ZstdError) as exc:
            at = self._fed - len(self._chunk) + self._pos
            self.damage = f"corrupt {self.kind} data after compressed byte {at}: {exc}"
            self._done = True
            return
        self._pos = end - left

    def readinto(self, buffer: Any) -> int:
        if self._at >= len(self._out):
            self._out, self._at = b"", 0
            self._fill()
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = memoryview(self._out)[self._at : self._at + n]
        self._at += n
        return n


def damage_of(stream: object) -> str | None:
    """Why a stream from ``open_file`` ended early (truncated or corrupt), or None."""
    raw = getattr(stream, "raw", stream)
    return getattr(raw, "damage", None)


def open_stream(path: Path) -> BinaryIO:
    """The decompressed byte stream of ``path``."""
    return open_file(path)[0]


def open_file(path: Path) -> tuple[BinaryIO, str | None, float]:
    """The decompressed byte stream of ``path``, its compression and its mtime.

    One ``open`` per file (the magic bytes are peeked from the same buffer): a walk over
    tens of thousands of small logs pays per system call. A damaged compressed stream ends
    where the damage starts; ``damage_of`` says why.
    """
    raw, st = open_regular(path)
    try:
        magic = raw.peek(4)[:4]  # type: ignore[attr-defined]
        if magic.startswith(_GZIP_MAGIC):
            return io.BufferedReader(Decompressed(raw, "gzip"), BLOCK), "gzip", st.st_mtime
        if magic.startswith(_ZSTD_MAGIC):
            return io.BufferedReader(Decompressed(raw, "zstd"), BLOCK), "zstd", st.st_mtime
    except BaseException:
        raw.close()
        raise
    return raw, None, st.st_mtime


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
    # Why the stream ended early (truncated, corrupt, a read error), or None. Then the
    # incomplete line at the end is dropped and ``consumed``/``last`` stop at the end of the
    # last complete line, so a later ingest of the whole file continues exactly there.
    damage: str | None = None
    _recent: bytes = b""  # the last HEAD + max_line bytes consumed

    def _chunks(self) -> Iterator[bytes]:
        if self.prefix:
            yield self.prefix
        read = self.stream.read
        while True:
            try:
                data = read(self.block_size)
            except OSError as exc:  # EIO and the like, midway through the file
                self.damage = f"read error: {exc.strerror or exc}"
                return
            if not data:
                self.damage = damage_of(self.stream)
                return
            yield data

    def __iter__(self) -> Iterator[bytes]:
        carry = b""
        dropping = False  # inside an over-long line: discard up to the next newline
        window = HEAD + self.max_line + 1
        self._recent = self.last
        for data in self._chunks():
            self.stats.bytes += len(data)
            self.consumed += len(data)
            self.last = data[-HEAD:] if len(data) >= HEAD else (self.last + data)[-HEAD:]
            self._recent = (
                data[-window:] if len(data) >= window else (self._recent + data)[-window:]
            )
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
        if carry and self.damage is not None:  # cut off mid-line: not a line
            self.stats.bytes -= len(carry)
            self.consumed -= len(carry)
            self.last = self._recent[: -len(carry)][-HEAD:]
        elif carry and not dropping:
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
