"""Incremental reader of a plaintext HTTP/1 request head, for routing on `Host`.

How it works: `parse_http_request(data)` gets everything buffered from the start of
the connection. The method is checked against a list of known methods as its first
bytes arrive, so anything else (an SSH banner, the HTTP/2 preface "PRI *", a PROXY
protocol line) is refused after a few bytes as "not-tls" (not a protocol the sniffer
routes on). Then the head is read line by line; each complete line is checked at once
(RFC 9112): request line "METHOD SP target SP HTTP/1.x", header fields "name: value"
with a token name, no whitespace before the colon, no obsolete line folding, no
control bytes, at most one Host. Lines end in CRLF; a bare LF is accepted (RFC 9112
section 2.2 allows it), a bare CR is not. Until the empty line that ends the head
arrives, the result is `NeedData(len(data) + 1)`; a head longer than `max_size` is
"too-large".

Incremental at linear cost: `HeadReader` resumes where it stopped. It keeps the offset
where the next line starts and how far the buffer has been searched for that line's
LF, plus what the complete lines said (method, target, Host, line count). Each
`step(data)`, with the buffer grown since the last call, searches only bytes not
searched before and checks each complete line once, so a head fed in any chunking
(6-byte header lines, one byte at a time) costs time linear in its size. It cannot
know how far away the end of the head is, so its `at_least` is only
`len(data) + 1`: the resumption, not the wait, is what keeps the cost linear.
`parse_http_request(data)` is the one-shot form (a fresh reader).

The routing name is the authority of an absolute-form target when there is one (RFC
9112 section 3.2.2: Host is then ignored), else the Host field; its port is dropped
and it is normalised like an SNI (lowercase, no trailing dot, no IPv6 brackets). A
request without Host (HTTP/1.0) or with an empty Host has no name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.names import check_host_name

__all__ = ["HeadReader", "HttpRequest", "parse_http_request", "could_be_http", "METHODS"]

Buffer = bytes | bytearray

METHODS = frozenset(
    {
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"CONNECT",
        b"OPTIONS",
        b"TRACE",
        b"PATCH",
        # WebDAV / CalDAV, which media servers and file shares behind relays do use
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"REPORT",
        b"SEARCH",
        b"MKCALENDAR",
    }
)
_PREFIXES = frozenset(m[:i] for m in METHODS for i in range(1, len(m) + 1))
_LONGEST = max(len(m) for m in METHODS)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_PORT = re.compile(r"[0-9]*")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    host: str | None  # normalised like an SNI, port stripped; None if absent or empty
    host_is_ip: bool
    size: int  # bytes of the head, the empty line included


def could_be_http(data: bytes) -> bool:
    """True while `data` may still start an HTTP/1 request (a known method, then SP)."""
    sp = data.find(b" ", 0, _LONGEST + 1)
    if sp < 0:
        return len(data) <= _LONGEST and data in _PREFIXES
    return data[:sp] in METHODS


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def parse_http_request(data: Buffer, max_size: int = 65536) -> HttpRequest | NeedData:
    """Read an HTTP/1 request head from the start of `data` (one shot; see `HeadReader`).

    Returns the `HttpRequest` once the empty line ending the head is in `data`, or
    `NeedData` before. Raises `ProtocolError`: "not-tls" (not an HTTP/1 request),
    "malformed", or "too-large" (no end of head within `max_size` bytes).
    """
    return HeadReader().step(data, max_size)


class HeadReader:
    """The line-by-line read of one connection's request head, resumable.

    `step(data, max_size)` takes everything buffered from the connection's first byte
    (a buffer that only grows between calls) and returns the `HttpRequest`,
    `NeedData`, or raises `ProtocolError`; see the module docstring for what it keeps.
    """

    __slots__ = ("idx", "scanned", "line_no", "method", "target", "host_field", "seen_host")

    def __init__(self) -> None:
        self.idx = 0  # where the next (not yet complete) line starts
        self.scanned = 0  # data[idx:scanned] holds no LF
        self.line_no = 0  # complete lines checked so far
        self.method = self.target = ""
        self.host_field: bytes | None = None
        self.seen_host = False

    def step(self, data: Buffer, max_size: int) -> HttpRequest | NeedData:
        n = len(data)
        if not n:
            return NeedData(1)
        if self.line_no == 0 and not could_be_http(bytes(data[: _LONGEST + 1])):
            raise ProtocolError(
                "not-tls", f"neither TLS nor an HTTP/1 request: starts {bytes(data[:16])!r}"
            )
        idx = self.idx
        while True:
            nl = data.find(b"\n", self.scanned)
            if nl < 0:
                self.scanned = n
                break
            line = data[idx : nl - 1] if nl > idx and data[nl - 1] == 0x0D else data[idx:nl]
            if b"\r" in line:
                raise _malformed(f"bare CR in line {self.line_no + 1} of the request head")
            if nl + 1 > max_size:
                break
            idx = self.idx = self.scanned = nl + 1
            line_no = self.line_no
            if line_no == 0:
                self.method, self.target = _request_line(bytes(line))
            elif not line:
                host, is_ip = _routing_name(self.target, self.host_field)
                return HttpRequest(self.method, self.target, host, is_ip, idx)
            else:
                name, value = _field(bytes(line), line_no)
                if name.lower() == b"host":
                    if self.seen_host:
                        raise _malformed("more than one Host field")
                    self.seen_host = True
                    self.host_field = value
            self.line_no = line_no + 1
        if n >= max_size:
            raise ProtocolError(
                "too-large", f"no end of the HTTP request head within {max_size} bytes"
            )
        return NeedData(n + 1)


def _request_line(line: bytes) -> tuple[str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _malformed(f"request line {line[:80]!r} is not 'METHOD target HTTP/1.x'")
    method, target, version = parts
    if not _TARGET.fullmatch(target):
        raise _malformed(f"request target {target[:80]!r} is empty or has invalid bytes")
    if not _VERSION.fullmatch(version):
        raise _malformed(f"HTTP version {version[:20]!r} is not HTTP/1.0 or HTTP/1.1")
    return method.decode("ascii"), target.decode("ascii")


def _field(line: bytes, line_no: int) -> tuple[bytes, bytes]:
    if line[0] in b" \t":
        raise _malformed(f"line {line_no + 1}: obsolete header line folding")
    colon = line.find(b":")
    name = line[:colon] if colon > 0 else b""
    if not _TOKEN.fullmatch(name):
        raise _malformed(f"line {line_no + 1}: {line[:40]!r} is not a 'name: value' field")
    value = line[colon + 1 :].strip(b" \t")
    if not _VALUE.fullmatch(value):
        raise _malformed(f"line {line_no + 1}: control byte in the value of {name[:40]!r}")
    return name, value


def _routing_name(target: str, host_field: bytes | None) -> tuple[str | None, bool]:
    lowered = target[:8].lower()
    if lowered.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        return _authority_host(authority, "request target")
    if host_field is None:
        return None, False
    return _authority_host(host_field.decode("latin-1"), "Host")


def _authority_host(value: str, what: str) -> tuple[str | None, bool]:
    """Host part of `host[:port]` / `[v6]:port`, normalised; (None, False) when empty."""
    if not value:
        return None, False
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise _malformed(f"{what} {value[:80]!r}: unclosed '['")
        host, port = value[: close + 1], value[close + 1 :]
        if port and port[0] != ":":
            raise _malformed(f"{what} {value[:80]!r}: junk after ']'")
        port = port[1:]
    else:
        host, _, port = value.partition(":")
    if not _PORT.fullmatch(port):
        raise _malformed(f"{what} {value[:80]!r}: port is not a number")
    _, norm, is_ip = check_host_name(host.encode("latin-1"), what)
    if value.startswith("[") and not is_ip:
        raise _malformed(f"{what} {value[:80]!r}: brackets around a non-IP")
    return norm, is_ip
