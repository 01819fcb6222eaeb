"""The coverage scan: lines that look like an image use but that no parser understood.

Ingest must never undercount in silence. Besides the parser's own keyword lines, the driver
selects (in one more SIMD pass, ``analytics.ingest.select.regex_selector``) the lines with
a word of an image context (``pull``, ``FROM``, ``image``, ``resolve``, ``Retrieving``)
followed by something with a tag or digest, a ``FROM`` or a client's ``pull``. A
line the parser understood (its ``recognized()`` count grew, or an event came out) is fine;
any other such line is tested with ``looks_like_reference`` (a regex for a ``name:tag`` or
``name@sha256:...`` after the context word, or a bare name after ``FROM`` or a client's
``pull``) and, if it matches, counted as unused. The count, a few samples (``file:line``,
secrets redacted, truncated) and the coverage ``events / (events + unused)`` go to the
ingest report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The pre-selection, in one SIMD pass (``regex_selector``): a context word then something
# with a tag or digest on the same line, a FROM at a step's start, a client's pull command.
# Looser than ``looks_like_reference`` (no lookarounds in Hyperscan), which decides. One
# pattern that runs to the end of the line: Hyperscan reports one match per end offset, so
# a line costs one callback however many references it holds.
SUSPECT_PATTERNS: tuple[bytes, ...] = (
    rb"(?:(?:pull|Pull|PULL|FROM|image|Image|IMAGE|resolve|Retrieving)[^\n]*"
    rb"[A-Za-z0-9](?::\w|@sha256:)"
    rb"|(?:^|[:\]])[ \t]*FROM[ \t]+[a-z0-9]"
    rb"|(?:docker|podman|nerdctl|crictl|ctr|buildah)[^\n]*[ \t]pull[ \t])[^\n]*$",
)
SAMPLES_PER_FILE = 5
SAMPLE_CHARS = 200

# A reference with a tag or a digest; never a bare digest (``sha256:...`` is not a name).
_REF = (
    r"(?<![\w.:/@$-])(?!sha256:)"
    r"(?:[A-Za-z0-9][\w.-]*(?::[0-9]+)?/)*[A-Za-z0-9][\w.-]*"
    r"(?::\w[\w.-]{0,127}|@sha256:[0-9a-f]{64})"
)
_TAGGED = re.compile(r"(?:[Pp]ull|PULL|FROM|[Ii]mage|IMAGE|resolve|Retrieving)[^\n]{0,120}?" + _REF)
_BARE_FROM = re.compile(
    r"(?:^|[:\]]\s*)FROM\s+(?:--\S+\s+)*(?!scratch\b)[a-z0-9][\w./-]*(?:\s+[Aa][Ss]\s+\S+)?\s*$"
)
# Bounded windows: a lazy run to the line's end from each tool name is quadratic on a line
# that repeats it (9 s for 60 KB).
_BARE_PULL = re.compile(
    r"\b(?:docker|podman|nerdctl|crictl|ctr|buildah)\b[^\n]{0,200}?\spull\s+(?:-\S+\s+)*"
    r"[a-z0-9][\w./-]*(?:\s|$)"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_SECRETS = [
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1<redacted>@"),
    (
        re.compile(
            r"((?:--password|--pass|-p|--token|--creds|--registry-token|--identity-token)"
            r"(?:\s+|=))\S+"
        ),
        r"\1<redacted>",
    ),
    (
        re.compile(r"(\b(?:password|passwd|token|secret|auth|authorization)\b\s*[=:]\s*)\S+", re.I),
        r"\1<redacted>",
    ),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/-]{6,}=*"), r"\1 <redacted>"),
    (re.compile(r"\b(?:gh[pousr]_|glpat-|xox[abp]-)[A-Za-z0-9_-]{10,}"), "<redacted>"),
]


# A failure names an image without using it: not an undercount.
_FAILURE = re.compile(
    r"\b(?:[Ee]rror|ERRO|ERROR|FATA|[Ff]ailed|denied|[Uu]nauthorized|not found)\b"
)


def looks_like_reference(line: str) -> bool:
    """Whether ``line`` names an image in a pull, FROM or image context (a cheap test);
    an error message about one does not count."""
    found = _TAGGED.search(line) or _BARE_FROM.search(line) or _BARE_PULL.search(line)
    return bool(found) and not _FAILURE.search(line)


def redact(line: str) -> str:
    """``line`` without colours and credentials, cut to ``SAMPLE_CHARS``."""
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    for pattern, repl in _SECRETS:
        line = pattern.sub(repl, line)
    line = line.strip()
    return line if len(line) <= SAMPLE_CHARS else line[: SAMPLE_CHARS - 1] + "…"


@dataclass
class Unused:
    """Unused image-looking lines of one file: how many, and the first few (line, text)."""

    count: int = 0
    samples: list[tuple[int, str]] = field(default_factory=list)

    def wants_sample(self) -> bool:
        return len(self.samples) < SAMPLES_PER_FILE

    def add(self, line_no: int, text: str) -> None:
        self.count += 1
        if self.wants_sample():
            self.samples.append((line_no, redact(text)))


def coverage(events: int, unused: int) -> float | None:
    """``events / (events + unused)``; None when there was nothing to count."""
    total = events + unused
    return round(events / total, 4) if total else None
