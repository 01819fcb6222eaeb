"""Shell-style variable substitution as Dockerfiles, compose and GitLab CI use it.

``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``,
``${VAR+alt}``; ``$$`` is a literal ``$``. Hand-written because BuildKit's rules (shlex
lexer) are not exposed by the ``dockerfile`` package, and these few forms are all image
lines use.
"""

from __future__ import annotations

import re

# A word stops at the next "${": with `[^}]*` an unclosed "${A:-${A:-..." was scanned to its
# end from every "${" (quadratic: 11 s for 100 KB). Nested "${A:-${B}}" was never supported.
_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])((?:[^}$]|\$(?!\{))*))?\}"
    r"|\$([A-Za-z_][A-Za-z0-9_]*)"
)


class Unresolved(ValueError):
    """A variable with no value and no default; ``name`` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def substitute(text: str, values: dict[str, str | None]) -> str:
    if "$" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, word = m.group(2), m.group(3) or ""
        value = values.get(name)
        is_set = name in values and value is not None
        if op == ":-":
            return value if is_set and value else substitute(word, values)
        if op == "-":
            return value if is_set and value is not None else substitute(word, values)
        if op == ":+":
            return substitute(word, values) if is_set and value else ""
        if op == "+":
            return substitute(word, values) if is_set else ""
        if not is_set or value is None:
            raise Unresolved(name)
        return value

    return _VAR.sub(repl, text)
