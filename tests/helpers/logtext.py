"""Read a text-format connection record back, exactly (the grammar of observe/log.py).

A record line is ``... conn key=value key=value ...``. A value is ``-`` (None, or an
empty list) or items joined by ``,``; an item is bare (printable ASCII without space,
``"``, ``,`` or ``\\``) or a JSON string literal. `parse_record` returns the values as
written: a string for a one-item value, a list for more (the caller knows which fields
are lists: `as_list`). It raises ValueError on a line that does not follow the grammar,
so a test that uses it also checks the grammar.
"""

from __future__ import annotations

import json
import re

_ITEM = r'"(?:[^"\\]|\\.)*"|[^\s",]+'
_PAIR = re.compile(rf"([a-z_]+)=((?:{_ITEM})(?:,(?:{_ITEM}))*)(?: |$)")
_ITEMS = re.compile(_ITEM)

Value = str | list[str] | None


def _items(text: str) -> list[str]:
    out = []
    pos = 0
    for m in _ITEMS.finditer(text):
        if m.start() != pos:
            raise ValueError(f"bad list {text!r}")
        item = m.group(0)
        out.append(json.loads(item) if item.startswith('"') else item)
        pos = m.end() + 1  # past the comma
    if pos != len(text) + 1:
        raise ValueError(f"bad list {text!r}")
    return out


def parse_record(line: str) -> dict[str, Value]:
    """The key/value pairs after "conn " in `line` (see the module docstring)."""
    at = line.find(" conn ")
    if at < 0 and not line.startswith("conn "):
        raise ValueError(f"not a record: {line!r}")
    body = line[at + len(" conn ") :] if at >= 0 else line[len("conn ") :]
    out: dict[str, Value] = {}
    pos = 0
    while pos < len(body):
        m = _PAIR.match(body, pos)
        if m is None:
            raise ValueError(f"bad record at {body[pos:]!r}")
        key, raw = m.group(1), m.group(2)
        if raw == "-":
            out[key] = None
        else:
            items = _items(raw)
            out[key] = items[0] if len(items) == 1 else items
        pos = m.end()
    return out


def as_list(value: Value) -> list[str]:
    """A list field's value: None is [], one item is [item]."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
