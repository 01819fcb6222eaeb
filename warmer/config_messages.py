"""How a configuration's validation errors read: one line per problem, ``key.path: why``.

A value is never repeated in a type error (it may be a secret written in the wrong place);
quoted TOML keys are shown quoted; pydantic's internal location parts are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

_TOML = {"bool": "a boolean", "str": "a string", "list": "an array", "dict": "a table"}
_TOML |= {"int": "an integer", "float": "a float", "datetime": "a date-time"}


def show(v: Any) -> str:
    """``v`` for a message: its ``repr``, cut to 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("function-after", "function-before"):
            continue
        elif not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", part):  # a quoted TOML key: quoted here
            out += f"[{show(part)}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def messages(exc: ValidationError) -> Iterator[str]:
    for err in exc.errors():
        where = _loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"].endswith("_type") and "input" in err:
            # The type given, never the value (it may be a secret written in the wrong place).
            msg += f" (got {_TOML.get(type(err['input']).__name__, 'another type')})"
        yield f"{where}: {msg}" if where else msg
