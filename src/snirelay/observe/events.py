"""Observers of connection events: the core tells them, and knows none of them.

How it works
------------
An observer is any object with some of these methods (each optional):

- `accepted(conn)`: a client was accepted (before any byte is read);
- `sniffed(conn)`: the sniff phase ended (`conn.seen`: what was parsed, if anything;
  `conn.kind`: what it was) - only on endpoints with routes;
- `routed(conn)`: the routing decision was taken (route, or a close reason);
- `remote_tried(conn, index, error, seconds)`: one remote of the upstream
  (`conn.upstream.cfg.remotes[index]`) was tried: `error` None when it accepted, else
  why not (one line); `seconds` from the start of that try (name resolution and
  connect);
- `connected(conn)`: the backend side is up;
- `handshaken(conn, which, error, seconds)`: one side's handshake ended (`which`:
  "client" or "backend"; TLS, or a WebSocket upgrade over TLS or not): `error` None
  when it completed, else the close reason it ends the connection with;
- `closed(conn, record)`: the connection ended; `record` is its one record (a dict of
  plain values: the same fields whatever the observer).

`Observers.add(obs)` files each method it has into one list per event; the connection
calls the lists directly (`for cb in ctx.on_closed: cb(conn, record)`), so an event
nobody observes costs one empty-list check, and the record is built only when some
observer wants it. The connection log record is one observer (`RecordLog`); Prometheus
metrics and the admin API's live connection list will be others.

Observers must not raise (one that does is a bug: the poller logs it and closes that
connection) and must not block: they run on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snirelay.observe.log import CONN_LOG, conn_record

if TYPE_CHECKING:
    from snirelay.net.conn import Connection

ConnEvent = Callable[["Connection"], None]
TriedEvent = Callable[["Connection", int, "str | None", float], None]
HandshakeEvent = Callable[["Connection", str, "str | None", float], None]
CloseEvent = Callable[["Connection", dict[str, Any]], None]

EVENTS = ("accepted", "sniffed", "routed", "remote_tried", "connected", "handshaken", "closed")


class Observers:
    __slots__ = tuple("on_" + e for e in EVENTS)

    def __init__(self) -> None:
        self.on_accepted: list[ConnEvent] = []
        self.on_sniffed: list[ConnEvent] = []
        self.on_routed: list[ConnEvent] = []
        self.on_remote_tried: list[TriedEvent] = []
        self.on_connected: list[ConnEvent] = []
        self.on_handshaken: list[HandshakeEvent] = []
        self.on_closed: list[CloseEvent] = []

    @property
    def observed(self) -> bool:
        """Does any observer get a connection's events (and so read what was sniffed)?"""
        return bool(
            self.on_accepted
            or self.on_sniffed
            or self.on_routed
            or self.on_remote_tried
            or self.on_connected
            or self.on_handshaken
            or self.on_closed
        )

    def add(self, obs: object) -> None:
        """File each event method `obs` has into that event's list."""
        for event in EVENTS:
            method = getattr(obs, event, None)
            if method is not None:
                getattr(self, "on_" + event).append(method)


class RecordLog:
    """Writes each connection's record to the "snirelay.conn" log (text or JSON)."""

    __slots__ = ()

    @staticmethod
    def wanted() -> bool:
        """Is the record logged at all? (With logging off, it is never built.)"""
        return CONN_LOG.isEnabledFor(logging.INFO)

    def closed(self, conn: Connection, record: dict[str, Any]) -> None:
        conn_record(record)
