"""Route selection: a server name (SNI or HTTP Host) to one `[[endpoints.routes]]` entry.

Pure: no I/O, no clock, no logging. Built once per endpoint from the frozen config and
consulted once per connection.

How it works
------------
Routes are tried in configuration order and the first match wins; `None` means "no
route matched" and the caller falls back to the endpoint's own upstream (or closes).

A route either lists `server_names` or has a `when` condition:

- ``"emby.example.com"``: exact, case-insensitive, a trailing dot ignored;
- ``"*.example.com"``: any name under example.com at any depth (``a.example.com``,
  ``a.b.example.com``), never ``example.com`` itself;
- ``"~REGEX"``: matched with ``fullmatch`` (anchored at both ends), case-insensitive;
- ``when = "no_sni"``: a TLS ClientHello without a server name;
  ``when = "ip_sni"``: a TLS ClientHello whose server name is an IP literal;
  ``when = "not_tls"``: anything that is not TLS. A plaintext HTTP request's ``Host``
  is still tried against ``server_names`` first, so only an unknown or absent Host
  falls to the ``not_tls`` route.

An IP-literal name is never matched against ``server_names``.

To keep `pick` cheap without changing first-match semantics, the table precomputes:

- a dict from exact name to the index of the *earliest* route listing it;
- a dict from wildcard suffix (``example.com`` for ``*.example.com``) to the earliest
  route listing it; a name is looked up once per parent domain (a handful of labels);
- the regex routes in order, tried only while their index is below the best index
  found so far (an earlier wildcard/regex route beats a later exact route, and vice
  versa);
- the earliest index of each `when` condition.

`explain_miss` turns a miss into a one-line hint an operator can act on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from snirelay.config.model import Route
from snirelay.wire.names import normalize_name

__all__ = ["NamePattern", "RouteTable", "compile_pattern", "match_name", "normalize_name"]

_NO_SNI_HINT = (
    "client sent no server name (connected by IP?): use the backend's name, e.g. "
    "curl --resolve NAME:PORT:RELAY_IP https://NAME:PORT/, or terminate TLS at the relay"
)


@dataclass(frozen=True, slots=True)
class NamePattern:
    """One compiled `server_names` entry.

    `kind` is "exact", "wildcard" or "regex". `value` is the normalised exact name, the
    wildcard's suffix without the leading "*." (``example.com``), or the regex source
    without its leading "~".
    """

    kind: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, name: str) -> bool:
        """Does the already-normalised `name` match this pattern?"""
        if self.kind == "exact":
            return name == self.value
        if self.kind == "wildcard":
            suffix = self.value
            return (
                len(name) > len(suffix) + 1
                and name.endswith(suffix)
                and (name[-len(suffix) - 1] == ".")
            )
        assert self.regex is not None
        return self.regex.fullmatch(name) is not None


def compile_pattern(pattern: str) -> NamePattern:
    """Compile a `server_names` entry; raise ValueError with a one-line reason if bad."""
    if not pattern or not pattern.strip():
        raise ValueError("empty server name")
    if pattern.startswith("~"):
        source = pattern[1:]
        if not source:
            raise ValueError("invalid regex '': empty pattern after '~'")
        try:
            rx = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"invalid regex {source!r}: {exc}") from None
        return NamePattern("regex", source, rx)
    name = normalize_name(pattern)
    if name.startswith("*."):
        suffix = name[2:]
        if not suffix or "*" in suffix or suffix.startswith(".") or ".." in suffix:
            raise ValueError(
                f"invalid wildcard {pattern!r}: expected '*.' followed by a domain, "
                "e.g. '*.example.com'"
            )
        return NamePattern("wildcard", suffix)
    if "*" in name:
        raise ValueError(
            f"invalid wildcard {pattern!r}: '*' is only allowed as the whole first label, "
            "e.g. '*.example.com' (use '~REGEX' for anything else)"
        )
    if not name or name.startswith(".") or ".." in name:
        raise ValueError(f"invalid server name {pattern!r}")
    return NamePattern("exact", name)


def match_name(pattern: str, name: str) -> bool:
    """Does `name` match the `server_names` entry `pattern`? (Both are normalised here.)"""
    return compile_pattern(pattern).matches(normalize_name(name))


_NONE = 1 << 62  # "no route" sentinel index, larger than any real index


class RouteTable:
    """The routes of one endpoint, compiled for per-connection lookup.

    Error handling: the constructor raises ValueError for a bad `server_names` entry,
    the message prefixed with its place (``endpoints[0].routes[2].server_names[1]: ...``)
    and for a route with an unknown `when`. `pick` and `explain_miss` never raise.
    """

    __slots__ = ("_exact", "_no_sni", "_not_tls", "_ip_sni", "_regexes", "_routes", "_wild")

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes: tuple[Route, ...] = tuple(routes)
        self._exact: dict[str, int] = {}
        self._wild: dict[str, int] = {}
        self._regexes: list[tuple[int, re.Pattern[str]]] = []
        self._no_sni = self._ip_sni = self._not_tls = _NONE
        for index, route in enumerate(self._routes):
            if route.when is not None:
                if route.when == "no_sni":
                    self._no_sni = min(self._no_sni, index)
                elif route.when == "ip_sni":
                    self._ip_sni = min(self._ip_sni, index)
                elif route.when == "not_tls":
                    self._not_tls = min(self._not_tls, index)
                else:
                    raise ValueError(
                        f"{route.place}.when: unknown condition {route.when!r} "
                        "(expected no_sni, ip_sni, not_tls)"
                    )
            for n, raw in enumerate(route.server_names):
                try:
                    pat = compile_pattern(raw)
                except ValueError as exc:
                    raise ValueError(f"{route.place}.server_names[{n}]: {exc}") from None
                if pat.kind == "exact":
                    self._exact.setdefault(pat.value, index)
                elif pat.kind == "wildcard":
                    self._wild.setdefault(pat.value, index)
                else:
                    assert pat.regex is not None
                    self._regexes.append((index, pat.regex))

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def pick_index(self, name: str | None, *, tls: bool, name_is_ip: bool) -> int | None:
        """Like `pick`, but return the route's index (or None)."""
        if name is not None and not name_is_ip:
            name = name.lower()
            if name.endswith("."):
                name = name[:-1]
            best = self._exact.get(name, _NONE)
            wild = self._wild
            if wild:
                dot = name.find(".")
                while dot != -1:
                    found = wild.get(name[dot + 1 :])
                    if found is not None and found < best:
                        best = found
                    dot = name.find(".", dot + 1)
            for index, rx in self._regexes:
                if index >= best:
                    break
                if rx.fullmatch(name) is not None:
                    best = index
                    break
            if best != _NONE:
                return best
        if not tls:
            found_index = self._not_tls
        elif name is None:
            found_index = self._no_sni
        elif name_is_ip:
            found_index = self._ip_sni
        else:
            return None
        return None if found_index == _NONE else found_index

    def pick(self, name: str | None, *, tls: bool, name_is_ip: bool) -> Route | None:
        """The first route matching this connection, or None for the endpoint's default.

        `name` is the SNI (tls=True) or the HTTP Host without port (tls=False), already
        normalised, or None when the client sent none; `name_is_ip` says it is an IP
        literal (never matched against `server_names`).
        """
        index = self.pick_index(name, tls=tls, name_is_ip=name_is_ip)
        return None if index is None else self._routes[index]

    def configured_names(self) -> list[str]:
        """Every `server_names` entry, in route order (for diagnostics)."""
        return [raw for route in self._routes for raw in route.server_names]

    def closest_names(self, name: str, limit: int = 3) -> list[str]:
        """Configured names most like `name`: most shared trailing labels, then similarity."""
        name = normalize_name(name)
        labels = name.split(".")
        scored: list[tuple[int, float, str]] = []
        for raw in dict.fromkeys(self.configured_names()):
            shown = raw if raw.startswith("~") else normalize_name(raw)
            plain = shown.lstrip("~*.")
            other = plain.split(".")
            shared = 0
            while (
                shared < min(len(labels), len(other)) and labels[-1 - shared] == other[-1 - shared]
            ):
                shared += 1
            ratio = difflib.SequenceMatcher(None, name, plain).ratio()
            scored.append((shared, ratio, shown))
        scored.sort(key=lambda item: (-item[0], -item[1], item[2]))
        return [shown for _, _, shown in scored[:limit]]

    def explain_miss(self, name: str | None, tls: bool, name_is_ip: bool) -> str:
        """A one-line hint for a connection that matched no route."""
        if tls and name is None:
            return _NO_SNI_HINT + ' (or add a route with when = "no_sni")'
        if tls and name_is_ip:
            return (
                f"client sent the IP address {name} as server name, which never matches "
                "server_names: have it use the backend's name (curl --resolve "
                'NAME:PORT:RELAY_IP https://NAME:PORT/) or add a route with when = "ip_sni"'
            )
        if not tls:
            what = "not TLS" if name is None else f"plaintext HTTP for Host {name!r}"
            hint = f"{what}: no server_names matched"
            if name is not None and not name_is_ip:
                close = self.closest_names(name)
                if close:
                    hint += f" (closest configured: {', '.join(close)})"
            return (
                hint + ' and there is no route with when = "not_tls"; add one, or connect '
                "with TLS if this port expects it"
            )
        assert name is not None
        close = self.closest_names(name)
        if not close:
            return (
                f"server name {name!r} matched no route (no server_names configured): "
                "add it to a route's server_names"
            )
        return (
            f"server name {name!r} matched no route; closest configured: {', '.join(close)}; "
            "add it (or a '*.' wildcard for its parent domain) to a route's server_names"
        )
