"""Incremental, strict reader of a TLS ClientHello (RFC 8446, RFC 5246, RFC 6066).

How it works: `parse_client_hello(data)` is called with everything buffered so far,
from the first byte of the connection. It walks the TLS records (5-byte header, then
a body of 1..2^14 bytes), reassembling the handshake message that may be spread over
any number of records, down to 1-byte records with the 4-byte handshake header itself
split. Until the message is complete it returns `NeedData(at_least)`, where
`at_least` is a lower bound on the total input needed (the rest of the current
record, plus the smallest framing the remaining handshake bytes could arrive in), so
a caller never spins. Only once complete is the hello parsed, field by field, with
every length checked against its container; nothing is ever read past a bound.

Decisions are taken as early as the bytes allow: a first byte that is neither a
handshake record (0x16) nor an SSLv2 header (high bit set) is "not-tls" after one
byte; a handshake type other than ClientHello, an impossible record length or a
handshake length over the cap are reported as soon as their bytes arrive. A proper
prefix of a valid hello is never an error.

The record that completes the hello must end exactly where the hello ends (RFC 8446
section 5.1: a message preceding a key change must end on a record boundary; before
the ServerHello a client has nothing else to put in that record). Whatever follows the
hello's last record (0-RTT records) is not read: `size` says where the hello ends.

The SSLv2-compatible CLIENT-HELLO of RFC 5246 Appendix E.2 (2-byte header with the
high bit set, msg_type 1, version 3.x) is recognised as kind "sslv2": it has no
extensions, so no SNI.

Server names: the host_name is kept exactly as sent in `sni`; `sni_normalized` is
lowercased with one trailing dot dropped. An IPv4/IPv6 literal (forbidden by RFC 6066
but sent by some clients) is reported with `sni_is_ip`; anything else must be a valid
host name (LDH labels of 1..63 bytes, 253 at most; "_" is tolerated because real
hosts use it), otherwise the hello is "malformed". IDN names travel as A-labels
("xn--...") and stay that way; raw UTF-8 is rejected.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from snirelay.wire.errors import NeedData, ProtocolError

__all__ = ["ClientHello", "parse_client_hello", "check_host_name", "MAX_RECORD"]

MAX_RECORD = 1 << 14  # RFC 8446 5.1: a plaintext record body is at most 2^14 bytes
_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_MIN_BODY = 2 + 32 + 1 + 2 + 2 + 1 + 1  # version, random, sid len, suites len + 1 suite, comp

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_PRE_SHARED_KEY = 0x0029
EXT_EARLY_DATA = 0x002A
EXT_ECH = 0xFE0D

_VERSION_NAMES = {0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2"}
_VERSION_NAMES[0x0304] = "TLS1.3"

_EXT_HEADER = struct.Struct("!HH")
_PRINTABLE = re.compile(rb"[\x21-\x7e]+")
_NAME_RE = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a relay can learn from a ClientHello without decrypting anything."""

    kind: str  # "tls" | "sslv2"
    sni: str | None  # first host_name exactly as sent
    sni_normalized: str | None  # lowercased, trailing dot dropped
    sni_is_ip: bool
    alpn: tuple[str, ...] | None  # None: extension absent
    versions: tuple[str, ...]  # offered versions, GREASE removed
    ech: bool
    psk: bool
    early_data: bool
    records: int  # records that carried the hello
    size: int  # bytes from the start of the input to the end of the hello's last record
    handshake_size: int  # the handshake message, header included


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def parse_client_hello(data: bytes, max_size: int = 65536) -> ClientHello | NeedData:
    """Read a ClientHello from the start of `data`.

    Returns the `ClientHello`, or `NeedData` while `data` is a proper prefix of one.
    Raises `ProtocolError` ("not-tls", "malformed" or "too-large": the hello would
    need more than `max_size` bytes of input).
    """
    if not data:
        return NeedData(1)
    first = data[0]
    if first == _HANDSHAKE:
        return _parse_tls(data, max_size)
    if first & 0x80:
        return _parse_sslv2(data, max_size)
    raise ProtocolError("not-tls", f"first byte 0x{first:02x} starts no TLS handshake record")


# ------------------------------------------------------------------ records ---


def _framed(remaining: int) -> int:
    """The fewest bytes `remaining` handshake bytes can arrive in, record headers included."""
    if remaining <= 0:
        return 0
    return remaining + 5 * (-(-remaining // MAX_RECORD))


def _need(at_least: int, max_size: int) -> NeedData:
    if at_least > max_size:
        raise ProtocolError(
            "too-large",
            f"the ClientHello needs at least {at_least} bytes, over the cap of {max_size}",
        )
    return NeedData(at_least)


def _parse_tls(data: bytes, max_size: int) -> ClientHello | NeedData:
    n = len(data)
    pos = 0
    bodies: list[bytes] = []
    have = 0  # handshake bytes in complete records
    head = b""  # the first (up to) 4 handshake bytes
    total = -1  # length of the handshake message with its header, once known
    while True:
        if n - pos < 5:
            _check_record_start(data, pos)
            missing = total - have if total >= 0 else 4 + _MIN_BODY - have
            return _need(pos + _framed(missing), max_size)
        _check_record_start(data, pos)
        rlen = (data[pos + 3] << 8) | data[pos + 4]
        if rlen == 0:
            raise _malformed(f"empty handshake record at offset {pos}")
        if rlen > MAX_RECORD:
            raise _malformed(f"record at offset {pos} is {rlen} bytes long, over 2^14")
        start = pos + 5
        end = start + rlen
        if total < 0:
            head += data[start : min(start + 4 - len(head), n, end)]
            if head and head[0] != _CLIENT_HELLO:
                raise _malformed(f"handshake type {head[0]} where a ClientHello (1) must be")
            if len(head) == 4:
                body_len = int.from_bytes(head[1:4], "big")
                if body_len < _MIN_BODY:
                    raise _malformed(f"ClientHello body of {body_len} bytes is too short")
                total = 4 + body_len
        if total >= 0 and have + rlen > total:
            raise _malformed(
                f"record at offset {pos} holds {have + rlen - total} bytes after the ClientHello"
            )
        after = (total if total >= 0 else 4 + _MIN_BODY) - have - rlen
        if end + _framed(after) > max_size or n < end:
            return _need(end + _framed(after), max_size)
        bodies.append(data[start:end])
        have += rlen
        pos = end
        if have == total:
            break
    hs = bodies[0] if len(bodies) == 1 else b"".join(bodies)
    return _parse_body(hs, records=len(bodies), size=pos)


def _check_record_start(data: bytes, pos: int) -> None:
    """Reject a record header as soon as its first bytes show it cannot be one."""
    n = len(data)
    if pos < n and data[pos] != _HANDSHAKE:
        raise _malformed(f"record type {data[pos]} at offset {pos} interrupts the ClientHello")
    if pos + 1 < n and data[pos + 1] != 3:
        if pos == 0:
            raise ProtocolError("not-tls", f"record version major {data[1]} is not 3")
        raise _malformed(f"record version major {data[pos + 1]} at offset {pos} is not 3")


# --------------------------------------------------------------- the hello ---


def _u16(b: bytes, p: int) -> int:
    return (b[p] << 8) | b[p + 1]


def _parse_body(hs: bytes, *, records: int, size: int) -> ClientHello:
    b = hs[4:]
    end = len(b)
    if b[0] != 3:
        raise _malformed(f"legacy_version 0x{_u16(b, 0):04x} is not 3.x")
    legacy = _u16(b, 0)
    p = 34
    sid = b[p]
    if sid > 32:
        raise _malformed(f"legacy_session_id of {sid} bytes (at most 32)")
    p += 1 + sid
    if p + 2 > end:
        raise _malformed("ClientHello ends inside cipher_suites")
    suites = _u16(b, p)
    if suites < 2 or suites % 2:
        raise _malformed(f"cipher_suites length {suites} is not a positive even number")
    p += 2 + suites
    if p + 1 > end:
        raise _malformed("ClientHello ends before compression_methods")
    comp = b[p]
    p += 1
    if comp < 1 or p + comp > end:
        raise _malformed(f"compression_methods length {comp} does not fit")
    if 0 not in b[p : p + comp]:
        raise _malformed("compression_methods lacks the null method")
    p += comp
    exts: dict[int, bytes] = {}
    last = -1
    if p < end:
        if p + 2 > end:
            raise _malformed("ClientHello ends inside the extensions length")
        elen = _u16(b, p)
        p += 2
        if p + elen != end:
            raise _malformed(f"extensions length {elen} does not match the {end - p} bytes left")
        unpack = _EXT_HEADER.unpack_from
        while p < end:
            if p + 4 > end:
                raise _malformed("extension header cut short")
            etype, dlen = unpack(b, p)
            p += 4
            if p + dlen > end:
                raise _malformed(f"extension 0x{etype:04x} overruns the extensions block")
            if etype in exts:
                raise _malformed(f"extension 0x{etype:04x} appears twice")
            exts[etype] = b[p : p + dlen]
            last = etype
            p += dlen
    if EXT_PRE_SHARED_KEY in exts and last != EXT_PRE_SHARED_KEY:
        raise _malformed("pre_shared_key is not the last extension")

    sni = sni_norm = None
    sni_is_ip = False
    if EXT_SERVER_NAME in exts:
        raw = _server_name(exts[EXT_SERVER_NAME])
        if raw is not None:
            sni, sni_norm, sni_is_ip = check_host_name(raw, "SNI")
    alpn = _alpn(exts[EXT_ALPN]) if EXT_ALPN in exts else None
    if EXT_SUPPORTED_VERSIONS in exts:
        versions = _supported_versions(exts[EXT_SUPPORTED_VERSIONS])
    else:
        versions = _legacy_versions(legacy)
    return ClientHello(
        kind="tls",
        sni=sni,
        sni_normalized=sni_norm,
        sni_is_ip=sni_is_ip,
        alpn=alpn,
        versions=versions,
        ech=EXT_ECH in exts,
        psk=EXT_PRE_SHARED_KEY in exts,
        early_data=EXT_EARLY_DATA in exts,
        records=records,
        size=size,
        handshake_size=len(hs),
    )


def _server_name(d: bytes) -> bytes | None:
    """The host_name of a server_name extension (RFC 6066 section 3), None if it has none."""
    if len(d) < 2:
        raise _malformed("server_name extension too short for its list")
    if _u16(d, 0) + 2 != len(d) or len(d) == 2:
        raise _malformed(f"server_name list length {_u16(d, 0)} does not match its extension")
    q = 2
    seen: set[int] = set()
    host: bytes | None = None
    while q < len(d):
        if q + 3 > len(d):
            raise _malformed("server_name entry cut short")
        ntype = d[q]
        nlen = _u16(d, q + 1)
        q += 3
        if nlen == 0 or q + nlen > len(d):
            raise _malformed(f"server_name entry of length {nlen} does not fit")
        if ntype in seen:
            raise _malformed(f"server_name lists name type {ntype} twice")
        seen.add(ntype)
        if ntype == 0:
            host = d[q : q + nlen]
        q += nlen
    return host


def _alpn(d: bytes) -> tuple[str, ...]:
    """ProtocolNameList of RFC 7301: at least one name of 1..255 bytes."""
    if len(d) < 2 or _u16(d, 0) + 2 != len(d) or len(d) < 4:
        raise _malformed("ALPN list length does not match its extension")
    names: list[str] = []
    q = 2
    while q < len(d):
        ln = d[q]
        if ln == 0 or q + 1 + ln > len(d):
            raise _malformed(f"ALPN name of length {ln} does not fit")
        names.append(d[q + 1 : q + 1 + ln].decode("ascii", "backslashreplace"))
        q += 1 + ln
    return tuple(names)


def _is_grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def _version_name(v: int) -> str:
    return _VERSION_NAMES.get(v, f"0x{v:04x}")


def _supported_versions(d: bytes) -> tuple[str, ...]:
    """supported_versions in a ClientHello (RFC 8446 4.2.1): versions<2..254>."""
    if len(d) < 1 or d[0] + 1 != len(d) or d[0] < 2 or d[0] % 2:
        raise _malformed("supported_versions list length is wrong")
    values = struct.unpack_from(f"!{d[0] // 2}H", d, 1)
    return tuple(_version_name(v) for v in values if not _is_grease(v))


def _legacy_versions(legacy: int) -> tuple[str, ...]:
    """Without supported_versions a client offers every version up to legacy_version."""
    minor = min(legacy & 0xFF, 4)
    if minor == 0:
        return ("SSL3.0",)
    return tuple(_VERSION_NAMES[0x0300 | m] for m in range(minor, 0, -1))


# ------------------------------------------------------------------- names ---


def check_host_name(raw: bytes, what: str) -> tuple[str, str, bool]:
    """Validate a server name; return (as sent, normalised, is an IP literal).

    Normalised: lowercased, one trailing dot dropped, brackets around an IPv6 literal
    removed. Raises ProtocolError("malformed") naming `what` ("SNI", "Host") when the
    bytes are not a host name or an IP literal.
    """
    if not _PRINTABLE.fullmatch(raw):
        raise _malformed(f"{what} {raw[:80]!r} is not a printable ASCII host name")
    text = raw.decode("ascii")
    norm = text.lower()
    if norm.endswith("."):
        norm = norm[:-1]
    if norm.startswith("[") and norm.endswith("]"):
        if not _is_ip(norm[1:-1]):
            raise _malformed(f"{what} {text[:80]!r} is not an IP literal")
        return text, norm[1:-1], True
    if (":" in norm or norm.rpartition(".")[2].isdigit()) and _is_ip(norm):
        return text, norm, True
    if len(norm) > 253 or not _NAME_RE.fullmatch(norm):
        raise _malformed(f"{what} {text[:80]!r} is not a valid host name")
    return text, norm, False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------- SSLv2 ---


def _parse_sslv2(data: bytes, max_size: int) -> ClientHello | NeedData:
    """SSLv2-compatible CLIENT-HELLO, RFC 5246 Appendix E.2."""
    n = len(data)
    if n >= 3 and data[2] != 1:
        raise ProtocolError("not-tls", f"first byte 0x{data[0]:02x} starts no TLS record")
    if n >= 4 and data[3] != 3:
        raise ProtocolError("not-tls", f"SSLv2-style hello for version {data[3]}.x, not 3.x")
    if n < 2:
        return NeedData(2)
    mlen = ((data[0] & 0x7F) << 8) | data[1]
    if mlen < 9 + 3 + 16:
        raise _malformed(f"SSLv2 CLIENT-HELLO of {mlen} bytes is too short")
    size = 2 + mlen
    if n < size:
        return _need(size, max_size)
    m = data[2:size]
    cs, sid, ch = _u16(m, 3), _u16(m, 5), _u16(m, 7)
    if 9 + cs + sid + ch != mlen:
        raise _malformed("SSLv2 CLIENT-HELLO lengths do not add up")
    if cs == 0 or cs % 3:
        raise _malformed(f"SSLv2 cipher_spec_length {cs} is not a positive multiple of 3")
    if sid not in (0, 16):
        raise _malformed(f"SSLv2 session_id_length {sid} is neither 0 nor 16")
    if not 16 <= ch <= 32:
        raise _malformed(f"SSLv2 challenge_length {ch} is outside 16..32")
    return ClientHello(
        kind="sslv2",
        sni=None,
        sni_normalized=None,
        sni_is_ip=False,
        alpn=None,
        versions=_legacy_versions(_u16(m, 1)),
        ech=False,
        psk=False,
        early_data=False,
        records=1,
        size=size,
        handshake_size=mlen,
    )
