"""DNS messages for the stub resolver: build an A/AAAA query, read the answer.

Spec: RFC 1035 (message format, compression), RFC 2181 (TTLs, CNAME), RFC 6891
(EDNS0 OPT record), RFC 7766 (DNS over TCP: a 2-byte length before each message).

How it works:

- `build_query(qid, name, qtype)` encodes one question (class IN, recursion desired)
  and an EDNS0 OPT record advertising `EDNS_SIZE` bytes, so most answers fit one UDP
  datagram. A name that cannot be put on the wire raises ValueError (a caller's error,
  not the network's).
- `frame(msg)` / `parse_tcp_frame(data)`: the TCP length prefix. The reader returns
  `(message, size)`, `NeedData`, or raises ProtocolError for a frame too short to be
  a DNS message.
- `parse_response(msg, qid, name, qtype)` checks that `msg` is the response to that
  query (QR set, same id, opcode QUERY, the same single question; names compare
  ASCII case-insensitively) and returns a `DnsResponse`: the rcode, the TC bit, the
  addresses of type `qtype` with their TTLs, and the CNAME chain it followed to get
  there. The chain is followed only inside the response (a recursive server puts the
  whole chain in the answer section), each alias at most once, so a CNAME loop ends
  with no addresses. Records of other types, classes or owners are skipped; the
  authority and additional sections are not read.

Names are read with compression pointers (RFC 1035 4.1.4). Each pointer must point
strictly below every position the name has already been read from, so a name is read
in bounded steps whatever the input; labels over 63 bytes, names over 255 bytes and
reserved label types are malformed.

A response with TC set may be cut anywhere in its answer section: the records read
before the cut are returned (the caller decides whether to retry over TCP). In any
other response a cut is malformed.

TTLs with the top bit set are read as 0 (RFC 2181 8). Nothing here imports socket or
logs: the only outcomes are a value, `NeedData`, or `ProtocolError("malformed", ...)`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from snirelay.wire.errors import NeedData, ProtocolError

__all__ = [
    "AAAA",
    "CNAME",
    "EDNS_SIZE",
    "FORMERR",
    "NOERROR",
    "NXDOMAIN",
    "REFUSED",
    "SERVFAIL",
    "A",
    "DnsResponse",
    "build_query",
    "encode_name",
    "frame",
    "parse_response",
    "parse_tcp_frame",
    "rcode_name",
]

A = 1
CNAME = 5
AAAA = 28
OPT = 41
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
_RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
}

EDNS_SIZE = 1232  # the DNS flag day 2020 value: no IP fragmentation on common paths
HEADER = 12
MAX_NAME = 255  # wire length of a name, root label included
_ADDR_LEN = {A: 4, AAAA: 16}

_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_Q = struct.Struct("!HH")

Labels = tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """What a response says about one question.

    `addresses`: (ip text, ttl seconds) of the final name of `chain`, in the order
    the server sent them (``ipaddress`` text form: IPv6 compressed, lowercase).
    `chain`: the names followed, starting with the question's name, lowercase, no
    trailing dot. `ttl`: the lowest TTL over the chain's CNAME records and the
    addresses (None when there are no addresses). `size`: bytes of `msg` read.
    """

    qid: int
    rcode: int
    truncated: bool
    authoritative: bool
    addresses: tuple[tuple[str, int], ...]
    chain: tuple[str, ...]
    ttl: int | None


def rcode_name(rcode: int) -> str:
    return _RCODE_NAMES.get(rcode, f"RCODE{rcode}")


def encode_name(name: str) -> bytes:
    """`name` as wire labels ending with the root label. ValueError if it cannot be.

    One trailing dot is allowed (the name is absolute either way); empty labels,
    labels over 63 bytes, names over 255 bytes and non-ASCII text are refused
    (callers pass IDNA A-labels).
    """
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty DNS name")
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"DNS name is not ASCII: {name!r}") from None
    out = bytearray()
    for label in raw.split(b"."):
        if not label:
            raise ValueError(f"empty label in DNS name {name!r}")
        if len(label) > 63:
            raise ValueError(f"label over 63 bytes in DNS name {name!r}")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"DNS name over {MAX_NAME} bytes: {name!r}")
    return bytes(out)


def build_query(qid: int, name: str, qtype: int, *, edns_size: int = EDNS_SIZE) -> bytes:
    """A standard query (RD set) for `name`/`qtype`/IN with an EDNS0 OPT record
    (omitted when `edns_size` is 0). ValueError for a bad name or id."""
    if not 0 <= qid <= 0xFFFF:
        raise ValueError(f"DNS id out of range: {qid}")
    if not 0 <= qtype <= 0xFFFF:
        raise ValueError(f"DNS type out of range: {qtype}")
    arcount = 1 if edns_size else 0
    msg = _HDR.pack(qid, 0x0100, 1, 0, 0, arcount) + encode_name(name) + _Q.pack(qtype, CLASS_IN)
    if edns_size:
        # root owner, type OPT, class = UDP payload size, ttl = ext-rcode/version/flags 0
        msg += b"\x00" + _RR.pack(OPT, max(512, min(edns_size, 0xFFFF)), 0, 0)
    return msg


def frame(msg: bytes) -> bytes:
    """`msg` with the 2-byte length prefix DNS uses over TCP."""
    if len(msg) > 0xFFFF:
        raise ValueError("DNS message over 65535 bytes")
    return len(msg).to_bytes(2, "big") + msg


def parse_tcp_frame(data: bytes | bytearray | memoryview) -> tuple[bytes, int] | NeedData:
    """The first length-prefixed message in `data` and the bytes it used, or NeedData."""
    if len(data) < 2:
        return NeedData(2)
    n = (data[0] << 8) | data[1]
    if n < HEADER:
        raise ProtocolError("malformed", f"DNS frame of {n} bytes is shorter than a header")
    if len(data) < 2 + n:
        return NeedData(2 + n)
    return bytes(data[2 : 2 + n]), 2 + n


class _Cut(Exception):
    """The message ended inside a record (internal; becomes ProtocolError or a stop)."""


def _read_name(msg: bytes, pos: int) -> tuple[Labels, int]:
    """Labels (lowercased) at `pos` and the position after the name in place."""
    labels: list[bytes] = []
    total = 1  # the root label
    end = -1  # position after the name where it started (before the first pointer)
    floor = pos  # every pointer must point below this
    n = len(msg)
    while True:
        if pos >= n:
            raise _Cut
        length = msg[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise _Cut
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= floor:
                raise ProtocolError("malformed", "DNS compression pointer does not point back")
            floor = pos = target
            continue
        if kind:
            raise ProtocolError("malformed", f"DNS label type {kind:#x} is reserved")
        if length == 0:
            return tuple(labels), (end if end >= 0 else pos + 1)
        if pos + 1 + length > n:
            raise _Cut
        total += length + 1
        if total > MAX_NAME:
            raise ProtocolError("malformed", f"DNS name over {MAX_NAME} bytes")
        labels.append(msg[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length


def _text(labels: Labels) -> str:
    return b".".join(labels).decode("ascii", "backslashreplace")


def _wire_labels(name: str) -> Labels:
    try:
        raw = encode_name(name)
    except ValueError as e:
        raise ProtocolError("malformed", str(e)) from None
    out: list[bytes] = []
    pos = 0
    while raw[pos]:
        out.append(raw[pos + 1 : pos + 1 + raw[pos]].lower())
        pos += 1 + raw[pos]
    return tuple(out)


def parse_response(
    msg: bytes | bytearray | memoryview, qid: int, name: str, qtype: int
) -> DnsResponse:
    """Read `msg` as the response to query `qid` for `name`/`qtype`/IN (see module doc)."""
    msg = bytes(msg)
    want = _wire_labels(name)
    if len(msg) < HEADER:
        raise ProtocolError(
            "malformed", f"DNS message of {len(msg)} bytes is shorter than a header"
        )
    rid, flags, qdcount, ancount, _nscount, _arcount = _HDR.unpack_from(msg)
    if not flags & 0x8000:
        raise ProtocolError("malformed", "DNS message is a query, not a response")
    if rid != qid:
        raise ProtocolError("malformed", f"DNS response id {rid} does not match query id {qid}")
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise ProtocolError("malformed", f"DNS response opcode {opcode} is not QUERY")
    truncated = bool(flags & 0x0200)
    rcode = flags & 0xF
    if qdcount != 1:
        # FORMERR/NOTIMP answers may omit the question; anything else must echo it
        if qdcount == 0 and rcode != NOERROR:
            return DnsResponse(rid, rcode, truncated, bool(flags & 0x0400), (), (), None)
        raise ProtocolError("malformed", f"DNS response has {qdcount} questions, expected 1")
    try:
        qname, pos = _read_name(msg, HEADER)
        if pos + 4 > len(msg):
            raise _Cut
    except _Cut:
        raise ProtocolError("malformed", "DNS response ends inside its question") from None
    rtype, rclass = _Q.unpack_from(msg, pos)
    pos += 4
    if qname != want or rtype != qtype or rclass != CLASS_IN:
        raise ProtocolError(
            "malformed",
            f"DNS response is for {_text(qname)!r} type {rtype} class {rclass}, "
            f"not the question asked",
        )

    # owner -> aliases / addresses, in message order
    cnames: dict[Labels, tuple[Labels, int]] = {}
    addrs: dict[Labels, list[tuple[str, int]]] = {}
    try:
        for _ in range(ancount):
            owner, pos = _read_name(msg, pos)
            if pos + _RR.size > len(msg):
                raise _Cut
            typ, cls, ttl, rdlen = _RR.unpack_from(msg, pos)
            pos += _RR.size
            rdata = pos
            pos += rdlen
            if pos > len(msg):
                raise _Cut
            if ttl & 0x80000000:
                ttl = 0
            if cls != CLASS_IN:
                continue
            if typ == qtype and typ in _ADDR_LEN:
                if rdlen != _ADDR_LEN[typ]:
                    raise ProtocolError("malformed", f"DNS type {typ} record of {rdlen} bytes")
                raw = msg[rdata:pos]
                ip = ipaddress.IPv4Address(raw) if typ == A else ipaddress.IPv6Address(raw)
                addrs.setdefault(owner, []).append((str(ip), ttl))
            elif typ == CNAME:
                target, after = _read_name(msg, rdata)
                if after != pos:
                    raise ProtocolError("malformed", "DNS CNAME target does not fill its record")
                cnames.setdefault(owner, (target, ttl))
    except _Cut:
        if not truncated:
            raise ProtocolError(
                "malformed", "DNS response ends inside its answer section"
            ) from None

    chain = [want]
    seen = {want}
    low: int | None = None
    cur = want
    while cur in cnames and cur not in addrs:
        target, ttl = cnames[cur]
        if target in seen:
            break  # a loop: no addresses at the end of it
        low = ttl if low is None else min(low, ttl)
        seen.add(target)
        chain.append(target)
        cur = target
    found = tuple(addrs.get(cur, ()))
    if found:
        lowest = min(t for _, t in found)
        low = lowest if low is None else min(low, lowest)
    else:
        low = None
    return DnsResponse(
        qid=rid,
        rcode=rcode,
        truncated=truncated,
        authoritative=bool(flags & 0x0400),
        addresses=found,
        chain=tuple(_text(x) for x in chain),
        ttl=low,
    )
