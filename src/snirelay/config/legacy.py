"""realm's legacy v1 JSON format and its conversion to the modern shape.

A v1 file has four lists and nothing else::

    {"listening_addresses": ["0.0.0.0"], "listening_ports": ["5000", "8080-8088"],
     "remote_addresses": ["example.com"], "remote_ports": ["443", "9080-9088"]}

How it works
------------
This is realm's own rule (``src/conf/legacy/mod.rs``), port for port:

1. `flatten_ports`: each port list is flattened into one list of ports, entry by entry
   (``"P"`` is one port, ``"A-B"`` the ports A..B; realm's strings, or JSON integers).
   ``["8080-8081", "9000"]`` is ``[8080, 8081, 9000]``.
2. n = the number of listen ports. `join_addr_port` gives pair i (i < n) the i-th
   address and the i-th port of its side, or the side's first address / first port
   when that list is shorter; entries past n are unused.
3. Endpoint i listens on ``listening_addresses[i or 0]:listen_ports[i]`` and forwards
   to ``remote_addresses[i or 0]:remote_ports[i or 0]``. So ``["8080", "8081"]`` with
   remote addresses ``["a", "b"]`` sends 8081 to b, and ranges need not line up entry
   by entry (listen ``["7000-7001", "7002"]`` with remote ``["8000", "8001-8002"]``).

`legacy_pairs` returns those (listen, remote) pairs; `convert_legacy` turns them into a
plain ``{"endpoints": [{"listen": ..., "remote": ...}]}`` dict, one endpoint per pair,
IPv6 literals in brackets. With ``ranges=True`` (what the loader uses) consecutive pairs
are merged into one range endpoint (``"h:7000-7004"`` -> ``"r:8000-8004"``) where both
have the same listen address and the same remote address and both ports go up by one
each step; the modern loader expands it back into the same endpoints. `snirelay
convert` passes ``ranges=False``: realm itself parses a modern ``listen``/``remote`` as
one ``host:port`` (``to_socket_addrs`` / ``parse::<u16>``, ``src/conf/endpoint.rs``),
so ``"h:7000-7004"`` is a file realm cannot run.

Bounds: at most `MAX_LISTEN_PORTS` (65535, every port of one address) listen ports in
all, counted before anything is expanded; remote entries are checked in full
but expanded only as far as the n ports that are used.

Error handling
--------------
Where realm panics (bad port text, an empty list, a port past 65535, ``addrs[0]`` of an
empty list) or does something silently wrong (``"9-5"`` gives no ports, ``"1-2-3"``
reads as 1-2, port 0 listens anywhere, the same address and port listened on twice),
`ConfigError` is raised with one line naming the list entry, e.g.
``listening_ports[2]: port 70000 out of range (1-65535) in '1-70000'``; every list and
every entry is checked, and several problems come as one `notes.ConfigErrors`. Addresses must
be IP literals or host names; realm's other checks (all four lists are required) hold
too, and keys realm does not know stay errors with a did-you-mean hint (`Table`). One
difference is on purpose: an entry ending at port 65535 means what it says here, where
realm computes ``65535 + 1`` in a u16 (its release build wraps to 0 and drops the
entry's ports, shifting the pairs after it; a debug build panics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from snirelay.config.model import ConfigError
from snirelay.config.notes import Errors
from snirelay.config.table import Table, type_name
from snirelay.wire.names import ip_version, is_host_name

LEGACY_KEYS = ("listening_addresses", "listening_ports", "remote_addresses", "remote_ports")
MAX_LISTEN_PORTS = 65535
# one side of an entry, as Rust's u16::from_str reads it (an optional '+', digits)
_SIDE = r"\+?[0-9]+"
_ENTRY = re.compile(rf"({_SIDE})(?:-({_SIDE}))?")


@dataclass(frozen=True, slots=True)
class Pair:
    """One legacy endpoint: hosts as written in a modern address (IPv6 in brackets)."""

    listen_host: str
    listen_port: int
    remote_host: str
    remote_port: int


def is_legacy(data: object) -> bool:
    """True for a v1 document: a table holding any of the four v1 lists."""
    return isinstance(data, dict) and any(k in data for k in LEGACY_KEYS)


# ---------------------------------------------------------------- reading the lists


def _list(tbl: Table, key: str, kind: str) -> list[Any]:
    if key not in tbl:
        raise ConfigError(key, f"missing (a legacy v1 config has all of {', '.join(LEGACY_KEYS)})")
    value = tbl.data[key]
    if not isinstance(value, list) or not value:
        got = "empty" if isinstance(value, list) else type_name(value)
        raise ConfigError(key, f"expected a non-empty array of {kind}, got {got}")
    return value


def _shown(text: str, limit: int = 40) -> str:
    """`text` quoted for an error message, cut short if long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _port(side: str, raw: str, place: str) -> int:
    digits = side.lstrip("+").lstrip("0") or "0"
    port = int(digits) if len(digits) <= 5 else 65536  # no int() of a 5000-digit string
    if not 1 <= port <= 65535:
        shown = digits if len(digits) <= 12 else digits[:12] + "..."
        raise ConfigError(place, f"port {shown} out of range (1-65535) in {_shown(raw)}")
    return port


def port_entry(item: object, place: str) -> range:
    """One list entry (``"8080"``, ``"8080-8088"`` or an integer) as a range of ports."""
    if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
    if not isinstance(item, str):
        got = type_name(item)
        raise ConfigError(place, f"expected a port or a range like '8080-8088', got {got}")
    m = _ENTRY.fullmatch(item)
    if m is None:
        raise ConfigError(place, f"expected a port or a range like '8080-8088', got {_shown(item)}")
    first = _port(m.group(1), item, place)
    last = _port(m.group(2), item, place) if m.group(2) is not None else first
    if last < first:
        raise ConfigError(
            place, f"empty port range {_shown(item)} (the first port is above the last)"
        )
    return range(first, last + 1)


def _spans(entries: list[Any], key: str, cap: int | None = None) -> list[range]:
    """Every entry of a port list checked and read, in order; with `cap`, more than
    `cap` ports in all is an error naming the entry that goes past it."""
    spans: list[range] = []
    total = 0
    errors = Errors()  # every bad entry is named, not only the first
    for i, item in enumerate(entries):
        with errors.part():
            spans.append(port_entry(item, f"{key}[{i}]"))
            total += len(spans[-1])
        if cap is not None and total > cap:
            errors.raise_any()
            raise ConfigError(
                f"{key}[{i}]", f"more than {cap} listen ports in all (all there are on one address)"
            )
    errors.raise_any()
    return spans


def _flatten(spans: list[range], limit: int | None = None) -> list[int]:
    out: list[int] = []
    for span in spans:
        if limit is not None and len(out) >= limit:
            break
        out.extend(span if limit is None else span[: limit - len(out)])
    return out


def flatten_ports(entries: list[Any], key: str, limit: int | None = None) -> list[int]:
    """realm's flatten_ports: every entry's ports in order, one list. Every entry is
    checked; with `limit`, expansion stops after `limit` ports (the rest are unused)."""
    return _flatten(_spans(entries, key), limit)


def _address(item: object, place: str) -> str:
    """An address entry as a modern host: an IP literal (IPv6 bracketed) or a host name."""
    if not isinstance(item, str):
        raise ConfigError(place, f"expected an address string, got {type_name(item)}")
    bracketed = item.startswith("[") and item.endswith("]")
    if ip_version(item[1:-1] if bracketed else item) == 6:
        return item if bracketed else f"[{item}]"
    if not bracketed and (ip_version(item) == 4 or is_host_name(item)):
        return item
    raise ConfigError(place, f"expected an IP address or a host name, got {_shown(item)}")


def join_addr_port(addrs: list[str], ports: list[int], n: int) -> list[tuple[str, int]]:
    """realm's join_addr_port: n (address, port) pairs, the i-th of each list or its
    first when the list is shorter."""
    return [
        (addrs[i] if i < len(addrs) else addrs[0], ports[i] if i < len(ports) else ports[0])
        for i in range(n)
    ]


# ---------------------------------------------------------------- pairs and conversion


_KINDS = (
    ("listening_ports", "ports"),
    ("listening_addresses", "addresses"),
    ("remote_addresses", "addresses"),
    ("remote_ports", "ports"),
)


def legacy_pairs(data: dict[str, Any]) -> list[Pair]:
    """The endpoints a v1 document means, in realm's order (see the module docstring)."""
    tbl = Table(data, "", LEGACY_KEYS)
    errors = Errors()  # each list, and each entry of one, is checked on its own
    lists: dict[str, list[Any]] = {}
    for key, kind in _KINDS:
        with errors.part():
            lists[key] = _list(tbl, key, kind)
    lspans: list[range] = []
    rports: list[int] = []
    with errors.part():
        lspans = _spans(lists.get("listening_ports", []), "listening_ports", MAX_LISTEN_PORTS)
    lports = _flatten(lspans)
    with errors.part():
        rports = flatten_ports(lists.get("remote_ports", []), "remote_ports", len(lports))
    addrs: dict[str, list[str]] = {"listening_addresses": [], "remote_addresses": []}
    for key, out in addrs.items():
        for i, a in enumerate(lists.get(key, [])):
            with errors.part():
                out.append(_address(a, f"{key}[{i}]"))
    errors.raise_any()
    laddrs, raddrs = addrs["listening_addresses"], addrs["remote_addresses"]
    n = len(lports)
    pairs = [
        Pair(lh, lp, rh, rp)
        for (lh, lp), (rh, rp) in zip(
            join_addr_port(laddrs, lports, n), join_addr_port(raddrs, rports, n), strict=True
        )
    ]
    _check_unique(pairs, [i for i, span in enumerate(lspans) for _ in span])
    return pairs


def _check_unique(pairs: list[Pair], entry_of: list[int]) -> None:
    """The same listen address and port twice (realm fails to bind the second); pair i
    comes from ``listening_ports[entry_of[i]]``."""
    seen: dict[tuple[str, int], int] = {}
    for i, pair in enumerate(pairs):
        key = (pair.listen_host.lower(), pair.listen_port)
        if key in seen:
            first = f"listening_ports[{entry_of[seen[key]]}]"
            raise ConfigError(
                f"listening_ports[{entry_of[i]}]",
                f"{pair.listen_host}:{pair.listen_port} is listened on twice (also by {first})",
            )
        seen[key] = i


def _follows(a: Pair, b: Pair) -> bool:
    return (
        b.listen_host == a.listen_host
        and b.remote_host == a.remote_host
        and b.listen_port == a.listen_port + 1
        and b.remote_port == a.remote_port + 1
    )


def _ports(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def convert_legacy(data: dict[str, Any], *, ranges: bool = True) -> dict[str, Any]:
    """A v1 document as the modern dict shape: one endpoint per pair, or (`ranges`) one
    range endpoint per run of contiguous pairs (see the module docstring)."""
    runs: list[list[Pair]] = []
    for pair in legacy_pairs(data):
        if ranges and runs and _follows(runs[-1][-1], pair):
            runs[-1].append(pair)
        else:
            runs.append([pair])
    endpoints = [
        {
            "listen": f"{run[0].listen_host}:{_ports(run[0].listen_port, run[-1].listen_port)}",
            "remote": f"{run[0].remote_host}:{_ports(run[0].remote_port, run[-1].remote_port)}",
        }
        for run in runs
    ]
    return {"endpoints": endpoints}
