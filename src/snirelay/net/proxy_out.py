"""The PROXY protocol header a TCP connection sends to its backend (`send_proxy`).

How it works: `proxy_header(conn, tls_version)` encodes v1 or v2
(`send_proxy_version`, wire.proxy) with the client's address (what a received PROXY
header named, else the socket's peer) and the address the client reached (a received
header's destination, else the socket's own); v2 adds the SNI as the authority TLV and,
when the relay ended the client's TLS, the SSL TLV with the version once known. The
header's length is kept in ``conn.proxy[1]``, so the record's ``bytes_up`` counts the
client's bytes only.

Error handling: none of its own; an address the socket cannot give raises OSError, as
the caller's other socket calls do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snirelay.wire import proxy as pp

if TYPE_CHECKING:
    from snirelay.net.conn import Connection
    from snirelay.net.sides import Side


def _socket_of(side: Side) -> Any:
    """The socket under a side (a TLS side's `sock`, a WebSocket side's `inner`)."""
    raw: Any = side
    while not raw.raw:
        raw = raw.inner if raw.kind == "ws" else raw.sock
    return raw


def proxy_header(conn: Connection, tls_version: str | None) -> bytes:
    """The header for `conn` (see the module docstring)."""
    net = conn.upstream.cfg.network
    src = conn.caddr if conn.caddr is not None else _socket_of(conn.client).getpeername()
    if conn.proxy is None:
        conn.proxy = [None, 0]
    dst = conn.proxy[0] or _socket_of(conn.client).getsockname()
    src, dst = (str(src[0]), int(src[1])), (str(dst[0]), int(dst[1]))
    if net.send_proxy_version == 1:
        header = pp.encode_v1(src, dst)
    else:
        tlvs = []
        seen = conn.seen
        if seen is not None and seen.name and not seen.name_is_ip:
            tlvs.append(pp.authority(seen.name))
        if conn.upstream.server_tls is not None:
            tlvs.append(pp.ssl_tlv(tls_version or ""))
        header = pp.encode_v2(src, dst, tlvs=tuple(tlvs))
    conn.proxy[1] = len(header)
    return header
