"""Address grammar for the config: ``host:port``, ``[v6]:port``, port ranges, host names.

How it works
------------
`split_host_port` cuts the text at the last colon (or after the closing bracket of an
IPv6 literal); the host is then an IPv4 literal, a bracketed IPv6 literal or a DNS name
(`is_ip` / `is_host_name` of `snirelay.wire.names`, the one grammar). The port part is
one port or a range ``7000-7009``; `parse_addr_range` returns the host with the list of
ports, `parse_addr` insists on a single port.

`parse_through` is the one parser of ``through`` (an IP, optionally with a port): the
loader keeps the `Addr` it returns and the runtime binds to it as is.

Error handling: every function raises `ConfigError(place, message)`; nothing else.
"""

from __future__ import annotations

import re

from snirelay.config.model import Addr, ConfigError
from snirelay.wire.names import ip_version, is_host_name, is_ip

_PORTS = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")


def split_host_port(raw: str, place: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port`` into host (brackets removed) and port text."""
    text = raw.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ConfigError(place, f"invalid address {raw!r} (expected [IPv6]:PORT)")
        host, port = text[1:end], text[end + 2 :]
        if ip_version(host) != 6:
            raise ConfigError(place, f"invalid address {raw!r}: {host!r} is not an IPv6 address")
        return host, port
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(place, f"invalid address {raw!r} (expected HOST:PORT)")
    if ":" in host:
        raise ConfigError(place, f"invalid address {raw!r} (write IPv6 addresses as [ADDR]:PORT)")
    if not (is_ip(host) or is_host_name(host)):
        raise ConfigError(place, f"invalid address {raw!r}: {host!r} is not an IP or a host name")
    return host, port


def parse_ports(text: str, raw: str, place: str, *, allow_zero: bool) -> list[int]:
    """``443`` -> [443]; ``7000-7002`` -> [7000, 7001, 7002]."""
    m = _PORTS.match(text.strip())
    if not m:
        raise ConfigError(place, f"invalid port in {raw!r} (expected PORT or FIRST-LAST)")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    lowest = 0 if allow_zero and m.group(2) is None else 1
    for port in (first, last):
        if not lowest <= port <= 65535:
            raise ConfigError(place, f"port {port} out of range in {raw!r} ({lowest}-65535)")
    if last < first:
        raise ConfigError(place, f"empty port range in {raw!r} ({first} > {last})")
    return list(range(first, last + 1))


def parse_addr_range(raw: str, place: str, *, allow_zero: bool = False) -> tuple[str, list[int]]:
    """``host:7000-7009`` -> ("host", [7000, ..., 7009]); a single port gives one entry."""
    host, port = split_host_port(raw, place)
    return host, parse_ports(port, raw, place, allow_zero=allow_zero)


def parse_addr(
    raw: str, place: str, *, allow_zero: bool = False, default_port: int | None = None
) -> Addr:
    """One address with one port; `default_port` is used when the text has no port."""
    text = raw.strip()
    if default_port is not None and (is_ip(text) or is_host_name(text)):
        return Addr(text, default_port)
    host, ports = parse_addr_range(raw, place, allow_zero=allow_zero)
    if len(ports) != 1:
        raise ConfigError(place, f"a port range is not allowed here: {raw!r}")
    return Addr(host, ports[0])


def parse_through(raw: str, place: str) -> Addr:
    """`through`: an IP literal, optionally with a port (``192.0.2.1``, ``192.0.2.1:0``,
    ``[2001:db8::1]:4000``), as the address outbound sockets bind to (port 0 = any).

    The one parser of `through`: the loader calls it once and the model keeps the
    result, so the runtime binds to `Addr.host`/`Addr.port` without parsing again."""
    text = raw.strip()
    if is_ip(text):
        return Addr(text, 0)
    try:
        host, port = split_host_port(text, place)
    except ConfigError:
        raise ConfigError(
            place, f"invalid source address {raw!r} (expected IP or IP:PORT)"
        ) from None
    if not is_ip(host):
        raise ConfigError(place, f"invalid source address {raw!r}: {host!r} is not an IP literal")
    ports = parse_ports(port, raw, place, allow_zero=True)
    if len(ports) != 1:
        raise ConfigError(place, f"a port range is not allowed here: {raw!r}")
    return Addr(host, ports[0])


def parse_nameserver(raw: str, place: str) -> Addr:
    """A [dns] nameserver: an IP literal with an optional port (default 53)."""
    addr = parse_addr(raw, place, default_port=53)
    if not is_ip(addr.host):
        raise ConfigError(place, f"{raw!r}: a nameserver must be an IP address")
    return addr
