"""realm's legacy v1 JSON format and its conversion to the modern shape.

A v1 file has four lists and nothing else::

    {"listening_addresses": ["0.0.0.0"], "listening_ports": ["5000", "8080-8088"],
     "remote_addresses": ["example.com"], "remote_ports": ["443", "9080-9088"]}

How it works
------------
Endpoint n pairs the n-th listen port with the n-th entry of each other list, or with
the first entry when that list is shorter (realm's rule). Ports may be integers or
strings, and strings may be ranges (``"8080-8088"``); a range is kept in the address
(``"0.0.0.0:8080-8088"``) and expanded by the modern loader, which also checks that a
remote range has the listen range's length. IPv6 addresses get their brackets.

`convert_legacy` returns a plain dict ``{"endpoints": [{"listen": ..., "remote": ...}]}``
that `snirelay convert` writes as TOML or JSON and `load_config` reads like any file.
Error handling: `ConfigError` naming the list entry, e.g. "listening_ports[2]: ...".
"""

from __future__ import annotations

import re
from typing import Any

from snirelay.config.model import ConfigError
from snirelay.config.table import Table, type_name

LEGACY_KEYS = ("listening_addresses", "listening_ports", "remote_addresses", "remote_ports")
_PORT = re.compile(r"^[0-9]{1,5}(-[0-9]{1,5})?$")


def is_legacy(data: object) -> bool:
    """True for a v1 document: a table holding any of the four v1 lists."""
    return isinstance(data, dict) and any(k in data for k in LEGACY_KEYS)


def _entries(tbl: Table, key: str, kind: str) -> list[str]:
    value = tbl.data.get(key)
    if not isinstance(value, list) or not value:
        got = "empty" if isinstance(value, list) else type_name(value)
        raise tbl.error(key, f"expected a non-empty array of {kind}, got {got}")
    out = []
    for i, item in enumerate(value):
        place = f"{key}[{i}]"
        if kind == "ports":
            if isinstance(item, int) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str) or not _PORT.match(item.strip()):
                raise ConfigError(
                    place, f"expected a port or a range like '8080-8088', got {item!r}"
                )
            out.append(item.strip())
        else:
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(place, f"expected an address string, got {item!r}")
            out.append(item.strip())
    return out


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def convert_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Convert a v1 document to the modern dict shape (see the module docstring)."""
    tbl = Table(data, "", LEGACY_KEYS)
    lports = _entries(tbl, "listening_ports", "ports")
    laddrs = _entries(tbl, "listening_addresses", "addresses")
    raddrs = _entries(tbl, "remote_addresses", "addresses")
    rports = _entries(tbl, "remote_ports", "ports")

    def nth(items: list[str], n: int) -> str:
        return items[n] if n < len(items) else items[0]

    endpoints = [
        {
            "listen": f"{_host(nth(laddrs, n))}:{lport}",
            "remote": f"{_host(nth(raddrs, n))}:{nth(rports, n)}",
        }
        for n, lport in enumerate(lports)
    ]
    return {"endpoints": endpoints}
