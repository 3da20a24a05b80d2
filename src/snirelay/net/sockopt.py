"""Socket construction: listeners and outbound sockets with the configured options.

Linux copies most options (TCP_NODELAY, keepalive) from a listening socket to the
sockets it accepts, so they are set once on the listener rather than per connection.
"""

from __future__ import annotations

import _socket
import socket

from snirelay.config.model import Addr, NetworkConfig
from snirelay.net.sides import RawSide
from snirelay.wire.names import ip_version

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def family_of(host: str) -> int:
    return socket.AF_INET6 if ip_version(host) == 6 else socket.AF_INET


def set_keepalive(sock: _socket.socket, net: NetworkConfig) -> None:
    if net.tcp_keepalive <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    secs = max(1, int(net.tcp_keepalive))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, secs)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, secs)
    if net.tcp_keepalive_probe > 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, net.tcp_keepalive_probe)


def bind_device(sock: _socket.socket, interface: str | None) -> None:
    """SO_BINDTODEVICE; an OSError names the device ("interface 'wlan0': No such
    device"), so a connection that fails for it says why."""
    if interface:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        except OSError as exc:
            raise OSError(exc.errno, f"interface {interface!r}: {exc.strerror or exc}") from None


def make_listener(
    addr: Addr,
    net: NetworkConfig,
    interface: str | None = None,
    *,
    reuse_port: bool = False,
    backlog: int | None = 4096,
    defer_accept: int = 0,
) -> socket.socket:
    """A bound, listening (unless `backlog` is None), non-blocking TCP socket.
    `defer_accept` (seconds, 0 = off) sets TCP_DEFER_ACCEPT: the kernel hands a
    connection over once its first bytes have arrived (or after about that long), so a
    sniffing endpoint reads the ClientHello at accept without another wake. Raises OSError."""
    fam = family_of(addr.host)
    proto = IPPROTO_MPTCP if net.accept_mptcp else 0
    sock = socket.socket(fam, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(net.ipv6_only))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock, net)
        if defer_accept > 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
        bind_device(sock, interface)
        sock.bind((addr.host, addr.port))
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_address(through: Addr | None) -> tuple[str, int] | None:
    """The socket address outbound sockets bind to for `Upstream.through`, or None.

    `through` was parsed and checked once, at load (`config.addr.parse_through`); this
    only turns the `Addr` into what `socket.bind` takes."""
    return None if through is None else (through.host, through.port)


def outbound_socket(
    family: int,
    net: NetworkConfig,
    through: tuple[str, int] | None,
    interface: str | None,
) -> RawSide:
    """A non-blocking socket ready to connect (a raw side). Raises OSError."""
    proto = IPPROTO_MPTCP if net.send_mptcp else 0
    sock = RawSide(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock, net)
        bind_device(sock, interface)
        if through is not None and family_of(through[0]) == family:
            if through[1] == 0:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind(through)
    except BaseException:
        sock.close()
        raise
    return sock
