"""Dockerfile references through BuildKit's own parser (the ``dockerfile`` package).

The parser handles line continuations, the ``escape`` directive and heredocs; this module
adds the semantics: global ``ARG`` defaults substituted into ``FROM``, stage-scoped ``ARG``
for ``COPY --from`` and ``RUN --mount=from=``, stage names and indexes not counted as
images, ``--platform``, and the ``# syntax=`` frontend image.
"""

from __future__ import annotations

import contextlib
import re

import dockerfile

from analytics.staticrefs.model import Found, StaticRef, Warn
from analytics.staticrefs.variables import Unresolved, substitute
from warmer.oci.reference import InvalidReference, parse

_SYNTAX = re.compile(r"^#\s*syntax\s*=\s*(\S+)\s*$", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^#\s*[a-zA-Z]+\s*=")


def _args(values: tuple[str, ...], scope: dict[str, str | None]) -> dict[str, str | None]:
    """``ARG`` declarations; a default is expanded with the ARGs declared before it."""
    out: dict[str, str | None] = {}
    for item in values:
        name, eq, default = item.partition("=")
        if eq and len(default) >= 2 and default[0] == default[-1] and default[0] in "'\"":
            default = default[1:-1]
        if eq:
            # Left as written when unresolved: a FROM using it warns with the variable's name.
            with contextlib.suppress(Unresolved):
                default = substitute(default, {**scope, **out})
        out[name] = default if eq else None
    return out


def _flag(flags: tuple[str, ...], name: str) -> str | None:
    for f in flags:
        if f.startswith(name + "="):
            return f.split("=", 1)[1]
    return None


def scan_dockerfile(file: str, text: str, found: Found, warn: Warn) -> None:
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        warn(f"{file}: cannot parse as a Dockerfile: {exc}")
        return

    def emit(
        line: int, raw: str, scope: dict[str, str | None], context: str, plat: str | None
    ) -> None:
        try:
            value = substitute(raw, scope)
        except Unresolved as exc:
            warn(f"{file}:{line}: {context} {raw!r}: ${{{exc.name}}} has no value or default")
            return
        try:
            ref = parse(value)
        except InvalidReference as exc:
            warn(f"{file}:{line}: {context}: {exc}")
            return
        found(StaticRef(file, line, ref, "dockerfile", context, plat))

    for lineno, line in enumerate(text.splitlines()[:10], start=1):
        m = _SYNTAX.match(line)
        if m:
            emit(lineno, m.group(1), {}, "syntax", None)
            break
        if not _DIRECTIVE.match(line):
            break

    global_args: dict[str, str | None] = {}
    stage_args: dict[str, str | None] = {}
    stages: list[str] = []  # stage names, in order; index = position
    in_stage = False
    for cmd in commands:
        name = (cmd.cmd or "").upper()  # None for a line of only continuations
        if name == "ARG":
            declared = _args(cmd.value, {**global_args, **stage_args})
            if not in_stage:
                global_args.update(declared)
            else:  # `ARG X` in a stage takes the global default unless it gives its own
                for k, v in declared.items():
                    stage_args[k] = v if v is not None else global_args.get(k)
            continue
        if name == "FROM":
            in_stage = True
            stage_args = {}
            image = cmd.value[0] if cmd.value else ""
            alias = cmd.value[2] if len(cmd.value) >= 3 and cmd.value[1].upper() == "AS" else ""
            platform = _flag(cmd.flags, "--platform")
            if platform is not None and "$" in platform:
                try:
                    platform = substitute(platform, global_args)
                except Unresolved:
                    platform = None  # $BUILDPLATFORM / $TARGETPLATFORM: set by the builder
            try:
                resolved = substitute(image, global_args)
            except Unresolved:
                resolved = None
            if resolved is not None and (resolved.lower() in stages or resolved == "scratch"):
                pass  # a previous stage or the empty image
            else:
                emit(cmd.start_line, image, global_args, "FROM", platform)
            stages.append(alias.lower() if alias else f"\0{len(stages)}")
            continue
        scope = {**global_args, **stage_args}
        if name == "COPY":
            source = _flag(cmd.flags, "--from")
            if source is not None:
                _copy_source(file, cmd.start_line, source, scope, stages, emit, "COPY --from")
        elif name == "RUN":
            for f in cmd.flags:
                if not f.startswith("--mount="):
                    continue
                opts = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in f[8:].split(","))
                if "from" in opts:
                    _copy_source(
                        file, cmd.start_line, opts["from"], scope, stages, emit, "RUN --mount"
                    )


def _copy_source(
    file: str,
    line: int,
    source: str,
    scope: dict[str, str | None],
    stages: list[str],
    emit: object,
    context: str,
) -> None:
    try:
        value = substitute(source, scope)
    except Unresolved:
        value = None
    if value is not None and (value.isdigit() or value.lower() in stages):
        return  # a stage by index or name
    assert callable(emit)
    emit(line, source, scope, context, None)
