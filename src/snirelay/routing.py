"""Routing: what a connection's first bytes were -> one `Decision` (a route, or a reason
to close), and the route table that maps a server name (SNI or HTTP Host) to one
`[[endpoints.routes]]` entry.

Pure: no I/O, no clock, no logging. Tables are built once per endpoint from the frozen
config; `decide` runs once per connection of an endpoint that has routes. `snirelay
hello -c` calls `decide`, and so does the relay's decide phase (net/conn.py), so the
doctor cannot disagree with the relay (tests/integration/test_decide_agrees.py feeds
both the same inputs). Server-name patterns themselves are snirelay.patterns.

The decision
------------
`decide(table, seen, has_default=...)` takes what the sniff phase saw:

- a `Sniffed` (a complete ClientHello or HTTP/1 request head): routed by name with
  `RouteTable.pick`; no match falls to the endpoint's own upstream ("default") with the
  `explain_miss` hint;
- a `ProtocolError` (the parser refused the bytes): the ``when = "not_tls"`` route if
  there is one; else kind "not-tls" falls to the default (hint: the parser's message)
  and any other kind ("malformed", "too-large") closes with the kind as reason;
- a `SniffTimeout` (the deadline passed with no complete message): nothing sent goes to
  the ``not_tls`` route if there is one (server-speaks-first protocols share the port),
  else closes "sniff-timeout"; part of a message sent closes "sniff-timeout".

A decision that lands on an upstream with no remote (an endpoint with routes but no
``remote``) closes "no-route", keeping the hint. `classify(data, max_size)` says what
the sniff phase sees when a client sends exactly `data` and then waits: it is how
`snirelay hello` turns a captured file into the relay's input.

The table
---------
Routes are tried in configuration order and the first match wins; `None` means "no
route matched" and the caller falls back to the endpoint's own upstream (or closes).

A route either lists `server_names` or has a `when` condition:

- ``"emby.example.com"``: exact, case-insensitive, a trailing dot ignored;
- ``"*.example.com"``: any name under example.com at any depth (``a.example.com``,
  ``a.b.example.com``), never ``example.com`` itself;
- ``"~REGEX"``: the whole name must match (anchored at both ends), case-insensitive.
  Regexes run on RE2 (the `google-re2` bindings), whose automaton matches in time
  linear in the name: no pattern can make one name stall the event loop, as a nested
  quantifier such as ``^(a+)+\\.example\\.com$`` does with a backtracking engine.
  The price is RE2's syntax: backreferences, lookaround, atomic groups, possessive
  quantifiers, conditionals and ``\\Z`` are refused when the table is built, with a
  one-line error naming the construct (`compile_pattern`);
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
from collections.abc import Sequence
from dataclasses import dataclass

from snirelay.config.model import Route
from snirelay.patterns import NamePattern, Regex, compile_pattern, compile_regex, match_name
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.names import normalize_name
from snirelay.wire.sniff import Sniffed, sniff

__all__ = [
    "Decision",
    "NamePattern",
    "RouteTable",
    "SniffTimeout",
    "classify",
    "compile_pattern",
    "compile_regex",
    "decide",
    "match_name",
    "normalize_name",
]

_NO_SNI_HINT = (
    "client sent no server name (connected by IP?): use the backend's name, e.g. "
    "curl --resolve NAME:PORT:RELAY_IP https://NAME:PORT/, or terminate TLS at the relay"
)


NEAR_MAX = 32  # configured names compared with a missed name, at most, for its hint
_NONE = 1 << 62  # "no route" sentinel index, larger than any real index


class RouteTable:
    """The routes of one endpoint, compiled for per-connection lookup.

    Error handling: the constructor raises ValueError for a bad `server_names` entry,
    the message prefixed with its place (``endpoints[0].routes[2].server_names[1]: ...``)
    and for a route with an unknown `when`. `pick` and `explain_miss` never raise.
    """

    __slots__ = (
        "_exact",
        "_no_sni",
        "_not_tls",
        "_ip_sni",
        "_regexes",
        "_routes",
        "_wild",
        "_near",
    )

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes: tuple[Route, ...] = tuple(routes)
        self._near: dict[str, list[tuple[str, str, list[str]]]] | None = None  # for hints
        self._exact: dict[str, int] = {}
        self._wild: dict[str, int] = {}
        self._regexes: list[tuple[int, Regex]] = []
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
            raw = name.encode("utf-8", "replace") if self._regexes else b""
            for index, rx in self._regexes:
                if index >= best:
                    break
                if rx.fullmatch(raw) is not None:
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

    def _candidates(self, labels: list[str]) -> list[tuple[str, str, list[str]]]:
        """At most `NEAR_MAX` configured names to compare a missed name with: those that
        share its last two labels, else its last label, else the first ones configured.
        The index is built on the first miss."""
        if self._near is None:
            near: dict[str, list[tuple[str, str, list[str]]]] = {}
            for raw in dict.fromkeys(self.configured_names()):
                shown = raw if raw.startswith("~") else normalize_name(raw)
                plain = shown.lstrip("~*.")
                other = plain.split(".")
                entry = (shown, plain, other)
                near.setdefault("", []).append(entry)
                near.setdefault("." + ".".join(other[-1:]), []).append(entry)
                if len(other) > 1:
                    near.setdefault("." + ".".join(other[-2:]), []).append(entry)
            self._near = near
        keys = ["." + ".".join(labels[-2:])] if len(labels) > 1 else []
        for key in (*keys, "." + labels[-1], ""):
            found = self._near.get(key)
            if found:
                return found[:NEAR_MAX]
        return []

    def closest_names(self, name: str, limit: int = 3) -> list[str]:
        """Configured names most like `name`: most shared trailing labels, then similarity.

        Bounded work per call (a miss is a client's doing): only `NEAR_MAX` candidates
        (`_candidates`) are compared, whatever the size of the table."""
        name = normalize_name(name)[:253]
        labels = name.split(".")
        scored: list[tuple[int, float, str]] = []
        for shown, plain, other in self._candidates(labels):
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


# --- the decision ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SniffTimeout:
    """The sniff deadline passed: `buffered` bytes had arrived (0 = the client sent nothing)."""

    buffered: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one connection of an endpoint that has routes.

    `route`: the route taken; None = the endpoint's own upstream ("default").
    `close`: not None = close instead of connecting, and the record's close reason.
    `hint`: a one-line hint for the record (why no route matched / why closed), or None.
    `kind`: what was seen: "tls" | "sslv2" | "http" | a ProtocolError kind
    ("not-tls" | "malformed" | "too-large") | "timeout".
    """

    route: Route | None
    close: str | None
    hint: str | None
    kind: str

    @property
    def place(self) -> str:
        """The record's `route` field: the route's place, or "default"."""
        return "default" if self.route is None else self.route.place


NOTHING_SENT_HINT = "client sent nothing before network.sniff_timeout"
INCOMPLETE_HINT = "client sent an incomplete first message"
NO_REMOTE_HINT = "the endpoint has no remote for this connection"


def _to(route: Route | None, kind: str, hint: str | None, has_default: bool) -> Decision:
    """Connect to `route` (None: the default), or close "no-route" if it has no remote."""
    remotes = has_default if route is None else bool(route.upstream.remotes)
    if not remotes:
        return Decision(route, "no-route", hint or NO_REMOTE_HINT, kind)
    return Decision(route, None, hint, kind)


def decide(
    table: RouteTable, seen: Sniffed | ProtocolError | SniffTimeout, *, has_default: bool
) -> Decision:
    """The route for a connection, or the reason to close it (see the module docstring).

    `has_default`: the endpoint's own upstream has at least one remote. Only for
    endpoints with routes: an endpoint without routes is not sniffed and always goes to
    its default. Never raises.
    """
    if isinstance(seen, Sniffed):
        tls = seen.kind != "http"
        route = table.pick(seen.name, tls=tls, name_is_ip=seen.name_is_ip)
        hint = None
        if route is None:
            hint = table.explain_miss(seen.name, tls=tls, name_is_ip=seen.name_is_ip)
        return _to(route, seen.kind, hint, has_default)
    not_tls = table.pick(None, tls=False, name_is_ip=False)
    if isinstance(seen, SniffTimeout):
        if seen.buffered:
            return Decision(None, "sniff-timeout", INCOMPLETE_HINT, "timeout")
        if not_tls is not None:
            return _to(not_tls, "timeout", None, has_default)
        return Decision(None, "sniff-timeout", NOTHING_SENT_HINT, "timeout")
    if not_tls is not None:  # the record keeps why it was not TLS (malformed, too large...)
        return _to(not_tls, seen.kind, str(seen), has_default)
    if seen.kind == "not-tls":
        return _to(None, seen.kind, str(seen), has_default)
    return Decision(None, seen.kind, str(seen), seen.kind)


def classify(data: bytes, max_size: int) -> Sniffed | ProtocolError | SniffTimeout:
    """What the sniff phase sees when a client sends exactly `data`, then waits.

    A complete hello or request head is a `Sniffed`; bytes the parser refuses are its
    `ProtocolError`; a proper prefix the parser still waits on is a `SniffTimeout` of its
    length (the relay waits for more until its deadline), unless it already fills
    `max_size` (the relay's `sniff_max_bytes`): that is a "too-large" ProtocolError, as
    the relay stops buffering there. Empty input is `SniffTimeout(0)`. Never raises.
    """
    try:
        res = sniff(data, max_size)
    except ProtocolError as exc:
        return exc
    if isinstance(res, NeedData):
        if len(data) >= max_size:
            return ProtocolError("too-large", f"first bytes exceed {max_size}")
        return SniffTimeout(len(data))
    return res
