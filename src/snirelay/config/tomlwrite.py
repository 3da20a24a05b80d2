"""A small TOML writer for config-shaped dicts (tomllib only reads).

How it works
------------
`dumps(data)` writes a table's plain values (strings, numbers, booleans, arrays of
those) as ``key = value`` lines first, then each sub-table under a ``[path]`` header and
each array of tables as repeated ``[[path]]`` blocks, recursively. Strings use TOML
basic strings with quotes, backslashes and control characters escaped. Keys that are not bare
(letters, digits, ``_``, ``-``) are quoted. Shapes TOML cannot express (an array mixing
tables and values, None) raise ValueError. `tomllib.loads(dumps(d)) == d` for every
dict of those types; the tests check it.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise ValueError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(data: dict[str, Any], path: list[str], out: list[str]) -> None:
    for key, value in data.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            if isinstance(value, list) and any(isinstance(v, dict) for v in value):
                raise ValueError(f"array {key!r} mixes tables and values")
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in data.items():
        sub = [*path, _key(key)]
        if isinstance(value, dict):
            out.append("")
            out.append(f"[{'.'.join(sub)}]")
            _table(value, sub, out)
        elif _is_table_array(value):
            for item in value:
                out.append("")
                out.append(f"[[{'.'.join(sub)}]]")
                _table(item, sub, out)


def dumps(data: dict[str, Any]) -> str:
    """`data` as a TOML document (ends with a newline)."""
    out: list[str] = []
    _table(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"
