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

Incremental at linear cost: the record walk is resumable. `TlsReader` keeps where it
stopped (the offset of the first record not yet consumed, the handshake bytes and
header seen so far); each `step(data)` with the buffer grown since the last call
re-reads at most the one record header it stopped in, and copies each record body
once, so feeding a hello in any chunking, even 1-byte records fed byte by byte, costs
time linear in its size. `parse_client_hello(data)` is the one-shot form (a fresh
reader). A caller that also waits for `at_least` (as `sniff.Sniffer` does) calls it
only a handful of times per record.

Lean on the relay's path: once complete, the hello is walked once with offsets (no
dict of extension slices). What every connection needs, the server name (checked and
normalised by `wire.names.check_host_name`) and the sizes, is computed then, together
with the ECH / PSK / early-data flags (membership bits) and every structural check
(duplicate extensions, lengths, the ALPN list's framing, the supported_versions
length). `alpn` and `versions` are decoded from stored offsets only when read (the
log record reads `alpn`; `snirelay hello` prints both). Measured with
`.venv/bin/python bench/wire_parse.py --ref d5883ba --number 5000 --repeat 7` (CPU
time per call, best of 7, the old module timed in the same process, on the shared
2-core machine): median over the 33 TLS vectors 11.4 -> 6.6 us reading what the relay
needs (SNI, is-IP, size) and 11.3 -> 6.9 us adding alpn and ech (as the log record
does); the 517-byte curl hello 12.6 -> 6.7 us (12.0 -> 7.3 us with alpn and ech, in
the run before; single figures move by a few us between runs). A hello in 1-byte
records costs what it did (163 -> 158 us).

Server names: the host_name is kept exactly as sent in `sni`; `sni_normalized` is
lowercased with one trailing dot dropped (`wire.names`). An IPv4/IPv6 literal
(forbidden by RFC 6066 but sent by some clients) is reported with `sni_is_ip`;
anything else must be a host name by the one grammar in `wire.names` (LDH labels of
1..63 bytes, 253 at most, "_" tolerated because real hosts use it, the last label not
all digits), otherwise the hello is "malformed". IDN names travel as A-labels
("xn--...") and stay that way; raw UTF-8 is rejected.
"""

from __future__ import annotations

import struct

from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.names import check_host_name

__all__ = ["ClientHello", "TlsReader", "parse_client_hello", "parse_sslv2", "MAX_RECORD"]

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
# the extensions the walk notes (every other one is only framed and checked for repeats)
_NOTED = frozenset(
    {EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS, EXT_ECH, EXT_PRE_SHARED_KEY, EXT_EARLY_DATA}
)

Buffer = bytes | bytearray


class ClientHello:
    """What a relay can learn from a ClientHello without decrypting anything.

    Treat it as immutable. `alpn` and `versions` are decoded on each read from the
    handshake bytes the hello keeps (already validated when it was parsed).
    """

    __slots__ = (
        "kind",
        "sni",
        "sni_normalized",
        "sni_is_ip",
        "ech",
        "psk",
        "early_data",
        "records",
        "size",
        "handshake_size",
        "_hs",
        "_alpn_at",
        "_alpn_end",
        "_sv_at",
        "_legacy",
    )

    kind: str  # "tls" | "sslv2"
    sni: str | None  # first host_name exactly as sent
    sni_normalized: str | None  # lowercased, trailing dot dropped
    sni_is_ip: bool
    ech: bool
    psk: bool
    early_data: bool
    records: int  # records that carried the hello
    size: int  # bytes from the start of the input to the end of the hello's last record
    handshake_size: int  # the handshake message, header included

    def __init__(
        self,
        kind: str,
        hs: bytes,
        sni: str | None,
        sni_normalized: str | None,
        sni_is_ip: bool,
        alpn_at: int = -1,
        alpn_end: int = -1,
        sv_at: int = -1,
        legacy: int = 0x0303,
        ech: bool = False,
        psk: bool = False,
        early_data: bool = False,
        records: int = 1,
        size: int = 0,
        handshake_size: int = 0,
    ) -> None:
        self.kind = kind
        self._hs = hs
        self.sni = sni
        self.sni_normalized = sni_normalized
        self.sni_is_ip = sni_is_ip
        self._alpn_at = alpn_at
        self._alpn_end = alpn_end
        self._sv_at = sv_at
        self._legacy = legacy
        self.ech = ech
        self.psk = psk
        self.early_data = early_data
        self.records = records
        self.size = size
        self.handshake_size = handshake_size

    @property
    def alpn(self) -> tuple[str, ...] | None:
        """Offered ALPN protocol names in order; None when the extension is absent."""
        if self._alpn_at < 0:
            return None
        hs = self._hs
        names: list[str] = []
        q = self._alpn_at + 2
        end = self._alpn_end
        while q < end:
            ln = hs[q]
            names.append(hs[q + 1 : q + 1 + ln].decode("ascii", "backslashreplace"))
            q += 1 + ln
        return tuple(names)

    @property
    def versions(self) -> tuple[str, ...]:
        """Offered versions ("TLS1.3", ...; unknown ones as "0x...."), GREASE removed."""
        if self._sv_at < 0:
            return _legacy_versions(self._legacy)
        hs = self._hs
        at = self._sv_at
        names = []
        for q in range(at + 1, at + 1 + hs[at], 2):
            v = (hs[q] << 8) | hs[q + 1]
            if not _is_grease(v):
                names.append(_version_name(v))
        return tuple(names)

    def __repr__(self) -> str:
        return (
            f"ClientHello(kind={self.kind!r}, sni={self.sni!r}, sni_is_ip={self.sni_is_ip}, "
            f"alpn={self.alpn!r}, versions={self.versions!r}, ech={self.ech}, psk={self.psk}, "
            f"early_data={self.early_data}, records={self.records}, size={self.size}, "
            f"handshake_size={self.handshake_size})"
        )


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def parse_client_hello(data: Buffer, max_size: int = 65536) -> ClientHello | NeedData:
    """Read a ClientHello from the start of `data` (one shot; see `TlsReader`).

    Returns the `ClientHello`, or `NeedData` while `data` is a proper prefix of one.
    Raises `ProtocolError` ("not-tls", "malformed" or "too-large": the hello would
    need more than `max_size` bytes of input).
    """
    if not data:
        return NeedData(1)
    first = data[0]
    if first == _HANDSHAKE:
        return TlsReader().step(data, max_size)
    if first & 0x80:
        return parse_sslv2(data, max_size)
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


class TlsReader:
    """The record walk of one connection's TLS ClientHello, resumable.

    `step(data, max_size)` takes everything buffered from the connection's first byte
    (a buffer that only grows between calls, data[0] == 0x16) and returns the hello,
    `NeedData`, or raises `ProtocolError`. Between calls it keeps the offset of the
    first record it has not consumed, the record bodies consumed so far (copied once)
    and the handshake header, so a call re-reads at most one record header.
    """

    __slots__ = ("pos", "have", "head", "total", "bodies")

    def __init__(self) -> None:
        self.pos = 0  # offset of the first record not yet consumed
        self.have = 0  # handshake bytes in consumed records
        self.head = b""  # the first (up to) 4 handshake bytes, from consumed records
        self.total = -1  # length of the handshake message with its header, once known
        self.bodies: list[Buffer] = []  # the bodies of the consumed records

    def step(self, data: Buffer, max_size: int) -> ClientHello | NeedData:
        n = len(data)
        pos = self.pos
        if pos == 0 and n >= 9 and data[0] == _HANDSHAKE and data[1] == 3 and data[5] == 1:
            # the usual case, the whole hello in the first record: what the walk below
            # would conclude, without its bookkeeping
            rlen = (data[3] << 8) | data[4]
            if (
                (data[6] << 16 | data[7] << 8 | data[8]) + 4 == rlen
                and 4 + _MIN_BODY <= rlen <= MAX_RECORD
                and 5 + rlen <= min(n, max_size)
            ):
                return _parse_body(bytes(data[5 : 5 + rlen]), records=1, size=5 + rlen)
        have = self.have
        total = self.total
        head = self.head
        bodies = self.bodies
        while True:
            if n - pos < 5:
                _check_record_start(data, pos)
                missing = total - have if total >= 0 else 4 + _MIN_BODY - have
                self.pos, self.have, self.head, self.total = pos, have, head, total
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
                # decided from the first bytes of the record, complete or not; kept in
                # `head` only once the record is consumed
                seen = head + bytes(data[start : min(start + 4 - len(head), n, end)])
                if seen and seen[0] != _CLIENT_HELLO:
                    raise _malformed(f"handshake type {seen[0]} where a ClientHello (1) must be")
                if len(seen) == 4:
                    body_len = int.from_bytes(seen[1:4], "big")
                    if body_len < _MIN_BODY:
                        raise _malformed(f"ClientHello body of {body_len} bytes is too short")
                    total = 4 + body_len  # final: these 4 bytes will not change
            else:
                seen = head
            if total >= 0 and have + rlen > total:
                raise _malformed(
                    f"record at offset {pos} holds {have + rlen - total} bytes after the ClientHello"
                )
            after = (total if total >= 0 else 4 + _MIN_BODY) - have - rlen
            if end + _framed(after) > max_size or n < end:
                self.pos, self.have, self.head, self.total = pos, have, head, total
                return _need(end + _framed(after), max_size)
            # the record is complete: consume it (a slice is a copy, bytearray or not)
            bodies.append(data[start:end])
            head = seen
            have += rlen
            pos = end
            if have == total:
                break
        hs = bytes(bodies[0]) if len(bodies) == 1 else b"".join(bodies)
        return _parse_body(hs, records=len(bodies), size=pos)


def _check_record_start(data: Buffer, pos: int) -> None:
    """Reject a record header as soon as its first bytes show it cannot be one."""
    n = len(data)
    if pos < n and data[pos] != _HANDSHAKE:
        raise _malformed(f"record type {data[pos]} at offset {pos} interrupts the ClientHello")
    if pos + 1 < n and data[pos + 1] != 3:
        if pos == 0:
            raise ProtocolError("not-tls", f"record version major {data[1]} is not 3")
        raise _malformed(f"record version major {data[pos + 1]} at offset {pos} is not 3")


# --------------------------------------------------------------- the hello ---


def _u16(b: Buffer, p: int) -> int:
    return (b[p] << 8) | b[p + 1]


def _parse_body(hs: bytes, *, records: int, size: int) -> ClientHello:
    """Walk the complete handshake message `hs` (4-byte header included) once."""
    end = len(hs)
    if hs[4] != 3:
        raise _malformed(f"legacy_version 0x{_u16(hs, 4):04x} is not 3.x")
    legacy = _u16(hs, 4)
    p = 4 + 34
    sid = hs[p]
    if sid > 32:
        raise _malformed(f"legacy_session_id of {sid} bytes (at most 32)")
    p += 1 + sid
    if p + 2 > end:
        raise _malformed("ClientHello ends inside cipher_suites")
    suites = _u16(hs, p)
    if suites < 2 or suites % 2:
        raise _malformed(f"cipher_suites length {suites} is not a positive even number")
    p += 2 + suites
    if p + 1 > end:
        raise _malformed("ClientHello ends before compression_methods")
    comp = hs[p]
    p += 1
    if comp < 1 or p + comp > end:
        raise _malformed(f"compression_methods length {comp} does not fit")
    if 0 not in hs[p : p + comp]:
        raise _malformed("compression_methods lacks the null method")
    p += comp
    sni_at = alpn_at = sv_at = -1
    sni_end = alpn_end = 0
    ech = psk = early = False
    if p < end:
        if p + 2 > end:
            raise _malformed("ClientHello ends inside the extensions length")
        elen = _u16(hs, p)
        p += 2
        if p + elen != end:
            raise _malformed(f"extensions length {elen} does not match the {end - p} bytes left")
        types: list[int] = []  # repeats are looked for once, at the end
        append = types.append
        unpack = _EXT_HEADER.unpack_from
        etype = -1
        while p < end:
            if p + 4 > end:
                raise _malformed("extension header cut short")
            etype, dlen = unpack(hs, p)
            at = p + 4
            p = at + dlen
            if p > end:
                raise _malformed(f"extension 0x{etype:04x} overruns the extensions block")
            append(etype)
            if etype in _NOTED:
                if etype == EXT_SERVER_NAME:
                    sni_at, sni_end = at, p
                elif etype == EXT_ALPN:
                    alpn_at, alpn_end = at, p
                elif etype == EXT_SUPPORTED_VERSIONS:
                    sv_at = at
                    _check_supported_versions(hs, at, dlen)
                elif etype == EXT_ECH:
                    ech = True
                elif etype == EXT_PRE_SHARED_KEY:
                    psk = True
                else:
                    early = True
        if len(set(types)) != len(types):
            twice = next(t for i, t in enumerate(types) if t in types[:i])
            raise _malformed(f"extension 0x{twice:04x} appears twice")
        if psk and etype != EXT_PRE_SHARED_KEY:
            raise _malformed("pre_shared_key is not the last extension")

    sni = sni_norm = None
    sni_is_ip = False
    if sni_at >= 0:
        raw = _server_name(hs, sni_at, sni_end)
        if raw is not None:
            sni, sni_norm, sni_is_ip = check_host_name(raw, "SNI")
    if alpn_at >= 0:
        _check_alpn(hs, alpn_at, alpn_end)
    return ClientHello(
        "tls",
        hs,
        sni,
        sni_norm,
        sni_is_ip,
        alpn_at,
        alpn_end,
        sv_at,
        legacy,
        ech,
        psk,
        early,
        records,
        size,
        end,
    )  # positional: this runs once per connection


def _server_name(d: bytes, start: int, end: int) -> bytes | None:
    """The host_name of a server_name extension (RFC 6066 section 3), None if it has none."""
    dlen = end - start
    if dlen < 2:
        raise _malformed("server_name extension too short for its list")
    if _u16(d, start) + 2 != dlen or dlen == 2:
        raise _malformed(f"server_name list length {_u16(d, start)} does not match its extension")
    q = start + 2
    seen = 0  # a bit per name type seen (types are one byte)
    host: bytes | None = None
    while q < end:
        if q + 3 > end:
            raise _malformed("server_name entry cut short")
        ntype = d[q]
        nlen = _u16(d, q + 1)
        q += 3
        if nlen == 0 or q + nlen > end:
            raise _malformed(f"server_name entry of length {nlen} does not fit")
        if seen >> ntype & 1:
            raise _malformed(f"server_name lists name type {ntype} twice")
        seen |= 1 << ntype
        if ntype == 0:
            host = d[q : q + nlen]
        q += nlen
    return host


def _check_alpn(d: bytes, start: int, end: int) -> None:
    """ProtocolNameList of RFC 7301: at least one name of 1..255 bytes (framing only)."""
    dlen = end - start
    if dlen < 4 or _u16(d, start) + 2 != dlen:
        raise _malformed("ALPN list length does not match its extension")
    q = start + 2
    while q < end:
        ln = d[q]
        if ln == 0 or q + 1 + ln > end:
            raise _malformed(f"ALPN name of length {ln} does not fit")
        q += 1 + ln


def _check_supported_versions(d: bytes, start: int, dlen: int) -> None:
    """supported_versions in a ClientHello (RFC 8446 4.2.1): versions<2..254>."""
    if dlen < 1 or d[start] + 1 != dlen or d[start] < 2 or d[start] % 2:
        raise _malformed("supported_versions list length is wrong")


def _is_grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def _version_name(v: int) -> str:
    return _VERSION_NAMES.get(v, f"0x{v:04x}")


def _legacy_versions(legacy: int) -> tuple[str, ...]:
    """Without supported_versions a client offers every version up to legacy_version."""
    minor = min(legacy & 0xFF, 4)
    if minor == 0:
        return ("SSL3.0",)
    return tuple(_VERSION_NAMES[0x0300 | m] for m in range(minor, 0, -1))


# ------------------------------------------------------------------- SSLv2 ---


def parse_sslv2(data: Buffer, max_size: int) -> ClientHello | NeedData:
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
    m = bytes(data[2:size])
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
        "sslv2", m, None, None, False, legacy=_u16(m, 1), size=size, handshake_size=mlen
    )
