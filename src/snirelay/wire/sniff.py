"""What a new connection's first bytes are, and the name to route it by.

How it works: `sniff(data)` looks at the first byte. 0x16 (a TLS handshake record)
or a byte with the high bit set (an SSLv2-compatible hello) goes to the ClientHello
reader; anything else to the HTTP/1 reader, which refuses non-HTTP input after the
few bytes that rule out every known method. The result carries the normalised name
(SNI or Host) and whether it is an IP literal, plus the full parse for logging.
`size` of the parse tells how many bytes the message took; the caller forwards
everything it read, unchanged, whatever the outcome.

Same three outcomes as every wire parser: a `Sniffed`, `NeedData`, or `ProtocolError`
("not-tls", "malformed", "too-large").
"""

from __future__ import annotations

from dataclasses import dataclass

from snirelay.wire.clienthello import ClientHello, parse_client_hello
from snirelay.wire.errors import NeedData
from snirelay.wire.http1 import HttpRequest, parse_http_request

__all__ = ["Sniffed", "sniff"]


@dataclass(frozen=True, slots=True)
class Sniffed:
    kind: str  # "tls" | "sslv2" | "http"
    name: str | None  # normalised server name (SNI or Host), None if none
    name_is_ip: bool
    hello: ClientHello | None
    http: HttpRequest | None

    @property
    def size(self) -> int:
        """Bytes from the start of the stream to the end of the hello / request head."""
        if self.hello is not None:
            return self.hello.size
        return self.http.size if self.http is not None else 0


def sniff(data: bytes, max_size: int = 65536) -> Sniffed | NeedData:
    """Classify the first bytes of a connection; see the module docstring."""
    if not data:
        return NeedData(1)
    if data[0] == 0x16 or data[0] & 0x80:
        hello = parse_client_hello(data, max_size)
        if isinstance(hello, NeedData):
            return hello
        return Sniffed(hello.kind, hello.sni_normalized, hello.sni_is_ip, hello, None)
    req = parse_http_request(data, max_size)
    if isinstance(req, NeedData):
        return req
    return Sniffed("http", req.host, req.host_is_ip, None, req)


class Sniffer:
    """INTERIM (replaced by the sniffwire branch): feed bytes, parse once at_least is in."""

    __slots__ = ("data", "max_size", "need")

    def __init__(self, max_size: int) -> None:
        self.data = bytearray()
        self.max_size = max_size
        self.need = 1

    def feed(self, chunk: bytes) -> Sniffed | NeedData:
        from snirelay.wire.errors import ProtocolError

        self.data += chunk
        n = len(self.data)
        if n < self.need and n < self.max_size:
            return NeedData(self.need)
        res = sniff(bytes(self.data), self.max_size)
        if isinstance(res, NeedData):
            if n >= self.max_size:
                raise ProtocolError("too-large", f"first bytes exceed {self.max_size}")
            self.need = res.at_least
        return res
