"""PROXY protocol v1 (text) and v2 (binary): incremental reader and writers.

Spec: HAProxy's "The PROXY protocol, versions 1 & 2" (proxy-protocol.txt).

How it works: `parse_proxy_header(data)` is called with everything buffered so far,
from the first byte of the connection. It tells the versions apart by their first
byte (``P`` for v1's ``"PROXY "``, ``\\r`` for v2's 12-byte signature) and either

- returns a `ProxyHeader` whose `size` says how many bytes the header occupies (what
  follows is the client's payload and is not looked at);
- returns `NeedData(at_least)` while the input is a proper prefix of a header that may
  still be valid (``at_least`` never exceeds what the header needs: v1 is read until
  its CRLF, v2 needs exactly ``16 + length``);
- raises `ProtocolError("malformed", ...)`: not a PROXY header, or one that breaks
  the spec (a v1 line without CRLF within 107 bytes, a bad address or port, an unknown
  v2 version/command/family, an address block shorter than its family needs).

v1: ``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` with single spaces, addresses in
canonical form of the stated family, ports 0..65535 without leading zeros; or
``PROXY UNKNOWN ...\\r\\n``, whose rest is ignored (family "unknown", no addresses).

v2: the LOCAL command (health checks from the proxy itself) is accepted and carries
no addresses; the PROXY command with AF_INET/AF_INET6 over STREAM/DGRAM gives
tcp4/udp4/tcp6/udp6; AF_UNSPEC, AF_UNIX or an unspecified transport give family
"unknown" with no addresses (the receiver uses the real connection's). The TLVs after
the addresses are kept, in order (`ProxyHeader.tlvs`); one that does not fit the
header is malformed. The writers add the TLVs the relay sends (`authority`, the SNI;
`ssl_tlv`, for a connection whose TLS it ended).

Writers raise ValueError for a host that is not an IP literal or a bad port. IPv4-
mapped IPv6 addresses (``::ffff:a.b.c.d``, as a dual-stack socket reports IPv4
peers) are written as IPv4 when both ends are IPv4; a mix of IPv4 and IPv6 is
written as IPv6 with the IPv4 side mapped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TypeAlias

from snirelay.wire.errors import NeedData, ProtocolError

__all__ = [
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_SSL",
    "V1_MAX",
    "V2_SIGNATURE",
    "ProxyHeader",
    "encode_v1",
    "encode_v2",
    "encode_v2_local",
    "authority",
    "parse_proxy_header",
    "ssl_tlv",
]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V1_MIN = len(b"PROXY UNKNOWN\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16

_V2_FAMILIES = {
    (0x1, 0x1): ("tcp4", 4),
    (0x1, 0x2): ("udp4", 4),
    (0x2, 0x1): ("tcp6", 16),
    (0x2, 0x2): ("udp6", 16),
}
_V2_BLOCK = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}  # address block size by address family


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header said.

    `command` is "proxy" or "local" (v2 only); `family` is "tcp4", "tcp6", "udp4",
    "udp6" or "unknown"; `src`/`dst` are (ip, port), None when the header carries no
    usable addresses (LOCAL, UNKNOWN, AF_UNSPEC, AF_UNIX); `size` is the header length.
    """

    version: int
    command: str
    family: str
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    size: int
    tlvs: tuple[tuple[int, bytes], ...] = ()  # v2: (type, value) in order, kept as sent

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type `kind` (e.g. PP2_TYPE_AUTHORITY), or None."""
        return next((v for t, v in self.tlvs if t == kind), None)


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def parse_proxy_header(data: bytes) -> ProxyHeader | NeedData:
    """Read a PROXY v1 or v2 header from the start of `data` (see the module docstring)."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        return NeedData(V1_MIN)
    if data[0] == V1_PREFIX[0]:
        if n < len(V1_PREFIX):
            if V1_PREFIX.startswith(data):
                return NeedData(V1_MIN)
            raise _malformed("not a PROXY protocol header")
        if not data.startswith(V1_PREFIX):
            raise _malformed("not a PROXY protocol header")
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        if n < len(V2_SIGNATURE):
            if V2_SIGNATURE.startswith(data):
                return NeedData(V2_HEADER)
            raise _malformed("not a PROXY protocol header")
        if not data.startswith(V2_SIGNATURE):
            raise _malformed("not a PROXY protocol header")
        return _parse_v2(data)
    raise _malformed("not a PROXY protocol header")


# --- v1 -------------------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | NeedData:
    end = data.find(b"\n", 0, V1_MAX)
    if end == -1:
        if len(data) >= V1_MAX:
            raise _malformed(f"PROXY v1 line longer than {V1_MAX} bytes")
        if b"\r" in data[:-1]:
            raise _malformed("PROXY v1 line has a CR not followed by LF")
        return NeedData(max(len(data) + 1, V1_MIN))
    if data[end - 1] != 0x0D:
        raise _malformed("PROXY v1 line ends in LF without CR")
    line = data[: end - 1]
    size = end + 1
    if b"\r" in line:
        raise _malformed("PROXY v1 line has a CR not followed by LF")
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, "proxy", "unknown", None, None, size)
    if len(parts) != 6:
        raise _malformed("PROXY v1 line must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    _, proto, src, dst, sport, dport = parts
    if proto == b"TCP4":
        version = 4
    elif proto == b"TCP6":
        version = 6
    else:
        raise _malformed(f"PROXY v1 unknown protocol {proto[:16]!r}")
    src_ip = _v1_address(src, version)
    dst_ip = _v1_address(dst, version)
    family = "tcp4" if version == 4 else "tcp6"
    return ProxyHeader(
        1, "proxy", family, (src_ip, _v1_port(sport)), (dst_ip, _v1_port(dport)), size
    )


def _v1_address(raw: bytes, version: int) -> str:
    try:
        text = raw.decode("ascii")
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address
        if version == 4:
            addr = ipaddress.IPv4Address(text)
        else:
            if "%" in text:
                raise ValueError("scope id")
            addr = ipaddress.IPv6Address(text)
    except ValueError:  # UnicodeDecodeError included
        raise _malformed(f"PROXY v1 bad IPv{version} address {raw[:46]!r}") from None
    return str(addr)


def _v1_port(raw: bytes) -> int:
    if (
        not 1 <= len(raw) <= 5
        or not raw.isdigit()
        or (raw[0] == 0x30 and len(raw) > 1)
        or int(raw) > 65535
    ):
        raise _malformed(f"PROXY v1 bad port {raw[:8]!r}")
    return int(raw)


# --- v2 -------------------------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | NeedData:
    n = len(data)
    if n < V2_HEADER:
        return NeedData(V2_HEADER)
    ver_cmd, fam_proto = data[12], data[13]
    if ver_cmd >> 4 != 0x2:
        raise _malformed(f"PROXY v2 unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command > 0x1:
        raise _malformed(f"PROXY v2 unknown command {command}")
    family, proto = fam_proto >> 4, fam_proto & 0x0F
    if family not in _V2_BLOCK or proto > 0x2:
        raise _malformed(f"PROXY v2 unknown address family/protocol 0x{fam_proto:02x}")
    length = int.from_bytes(data[14:16], "big")
    size = V2_HEADER + length
    if n < size:
        return NeedData(size)
    block = _V2_BLOCK[family]
    if command == 0x0:  # LOCAL: addresses (if any) must be ignored
        return ProxyHeader(2, "local", "unknown", None, None, size)
    known = _V2_FAMILIES.get((family, proto))
    if known is None:  # AF_UNSPEC, AF_UNIX, or no transport: the connection's own addresses
        tlvs = _tlvs(data[V2_HEADER + block : size]) if length >= block else ()
        return ProxyHeader(2, "proxy", "unknown", None, None, size, tlvs)
    name, width = known
    if length < block:
        raise _malformed(f"PROXY v2 address block of {length} bytes, {name} needs {block}")
    tlvs = _tlvs(data[V2_HEADER + block : size])
    pos = V2_HEADER
    src_raw, dst_raw = data[pos : pos + width], data[pos + width : pos + 2 * width]
    pos += 2 * width
    sport = int.from_bytes(data[pos : pos + 2], "big")
    dport = int.from_bytes(data[pos + 2 : pos + 4], "big")
    src = str(ipaddress.ip_address(src_raw))
    dst = str(ipaddress.ip_address(dst_raw))
    return ProxyHeader(2, "proxy", name, (src, sport), (dst, dport), size, tlvs)


def _tlvs(raw: bytes) -> tuple[tuple[int, bytes], ...]:
    """The TLVs after the address block: type (1 byte), length (2), value; each must fit."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < 3:
            raise _malformed("PROXY v2 TLV cut short")
        kind, length = raw[pos], int.from_bytes(raw[pos + 1 : pos + 3], "big")
        if pos + 3 + length > len(raw):
            raise _malformed(f"PROXY v2 TLV of type 0x{kind:02x} longer than the header")
        out.append((kind, raw[pos + 3 : pos + 3 + length]))
        pos += 3 + length
    return tuple(out)


# --- writers --------------------------------------------------------------------------

_Addr: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str) -> _Addr:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"PROXY header needs an IP address, got {host!r}") from None


def _port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"PROXY header port out of range: {port!r}")
    return port


def _pair(src: tuple[str, int], dst: tuple[str, int]) -> tuple[int, _Addr, _Addr, int, int]:
    """(ip version, src, dst, sport, dport) with both addresses of one family."""
    a, b = _ip(src[0]), _ip(dst[0])
    sport, dport = _port(src[1]), _port(dst[1])
    a4, b4 = _as_v4(a), _as_v4(b)
    if a4 is not None and b4 is not None:
        return 4, a4, b4, sport, dport
    return 6, _as_v6(a), _as_v6(b), sport, dport


def _as_v4(addr: _Addr) -> ipaddress.IPv4Address | None:
    """The address as IPv4 if it is IPv4 or IPv4-mapped IPv6, else None."""
    if isinstance(addr, ipaddress.IPv4Address):
        return addr
    return addr.ipv4_mapped


def _as_v6(addr: _Addr) -> ipaddress.IPv6Address:
    """The address as IPv6 (IPv4 mapped into ::ffff:0:0/96), without a scope id."""
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
    return ipaddress.IPv6Address(addr.packed)


def encode_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A PROXY v1 line for a TCP connection from `src` to `dst`."""
    version, a, b, sport, dport = _pair(src, dst)
    proto = "TCP4" if version == 4 else "TCP6"
    return f"PROXY {proto} {a} {b} {sport} {dport}\r\n".encode("ascii")


def encode_v2(
    src: tuple[str, int],
    dst: tuple[str, int],
    *,
    stream: bool = True,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A PROXY v2 header (PROXY command) for a TCP (or, stream=False, UDP) flow, with
    `tlvs` after the addresses (see `authority` and `ssl_tlv`)."""
    version, a, b, sport, dport = _pair(src, dst)
    family = 0x1 if version == 4 else 0x2
    block = a.packed + b.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    block += b"".join(_tlv(kind, value) for kind, value in tlvs)
    if len(block) > 0xFFFF:
        raise ValueError("PROXY v2 header over 65,535 bytes")
    fam_proto = (family << 4) | (0x1 if stream else 0x2)
    return V2_SIGNATURE + bytes((0x21, fam_proto)) + len(block).to_bytes(2, "big") + block


PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02  # the host name the client asked for: its SNI
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_CLIENT_SSL = 0x01


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError(f"PROXY v2 TLV of type {kind} with {len(value)} bytes")
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def authority(name: str) -> tuple[int, bytes]:
    """The PP2_TYPE_AUTHORITY TLV: the server name (SNI) the client sent."""
    return PP2_TYPE_AUTHORITY, name.encode("ascii")


def ssl_tlv(version: str) -> tuple[int, bytes]:
    """The PP2_TYPE_SSL TLV of a connection whose TLS the relay ended: the client used
    TLS (`PP2_CLIENT_SSL`), verify 0 (no client certificate was asked for), and the
    version ("TLSv1.3") as the PP2_SUBTYPE_SSL_VERSION sub-TLV, as HAProxy sends it."""
    sub = _tlv(PP2_SUBTYPE_SSL_VERSION, version.encode("ascii"))
    return PP2_TYPE_SSL, bytes((PP2_CLIENT_SSL,)) + (0).to_bytes(4, "big") + sub


def encode_v2_local() -> bytes:
    """A PROXY v2 LOCAL header (no addresses), as a proxy sends for its own health checks."""
    return V2_SIGNATURE + b"\x20\x00\x00\x00"
