"""The one record a TCP connection writes when it closes (observers get it).

How it works: `connection_record(conn, reason, phase)` reads what the connection
collected along its phases (addresses, what was sniffed, the route, the pump's byte
counters, the sides' TLS and WebSocket details) into one flat dict, the fields of
docs/reference/config.md's log section; `phase` is the one the connection ended in.
``bytes_up`` leaves out a PROXY header the relay sent ahead of the client's bytes.

Error handling: none needed; it only reads. Imported by net.conn alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snirelay.net.phases import fmt_addr
from snirelay.net.pump import SpliceDir

if TYPE_CHECKING:
    from snirelay.net.conn import Connection


def connection_record(conn: Connection, reason: str, phase: str) -> dict[str, Any]:
    """The connection's one record (see the module docstring)."""
    up, down = conn.up, conn.down
    seen = conn.seen
    hello = seen.hello if seen is not None else None
    alpn = hello.alpn if hello is not None else None
    fields: dict[str, Any] = {
        "event": "conn",
        "id": conn.id,
        "listener": conn.ep.cfg.place,
        "client": fmt_addr(conn.caddr) if conn.caddr is not None else None,
        "backend": fmt_addr(conn.baddr) if conn.baddr is not None else None,
        "sni": seen.name if seen is not None else None,
        "alpn": list(alpn) if alpn is not None else None,
        "ech": hello.ech if hello is not None else False,
        "kind": conn.kind,
        "route": conn.route,
        "bytes_up": (up.nbytes if up else 0) + conn.sent - (conn.proxy[1] if conn.proxy else 0),
        "bytes_down": down.nbytes if down else 0,
        "duration": round(conn.ctx.loop.time() - conn.t0, 6),
        "path": ("splice" if isinstance(up, SpliceDir) else "copy") if up else None,
        "phase": phase,
        "close": reason,
    }
    if not conn.client.raw or (conn.backend is not None and not conn.backend.raw):
        from snirelay.net.tls import describe_sides

        fields.update(describe_sides(conn.client, conn.backend))
        for which, side in (("client", conn.client), ("backend", conn.backend)):
            if side is not None and side.kind == "ws":
                fields[f"{which}_ws"] = side.path  # type: ignore[attr-defined]
    if conn.ctx.worker:
        fields["worker"] = conn.ctx.worker
    if conn.failed_remotes:
        fields["failed_remotes"] = conn.failed_remotes
    if conn.hint:
        fields["hint"] = conn.hint
    return fields
