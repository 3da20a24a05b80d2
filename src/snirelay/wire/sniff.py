"""What a new connection's first bytes are, and the name to route it by.

How it works: a `Sniffer` is fed the connection's bytes as they arrive and keeps all
of them, in order, in `data` (the relay replays them byte-exact, whatever the
outcome). The first byte picks the reader: 0x16 (a TLS handshake record) or a byte
with the high bit set (an SSLv2-compatible hello) goes to the ClientHello reader;
anything else to the HTTP/1 reader, which refuses non-HTTP input after the few bytes
that rule out every known method. The result carries the normalised name (SNI or
Host) and whether it is an IP literal, plus the full parse for logging. `size` tells
how many bytes the message took; bytes after it stay in `data`, unread.

Linear cost, whatever the chunking: the sniffer does not call its reader again
before the reader's last `NeedData.at_least` bytes are buffered (or `max_size`,
where it must decide), and both readers resume where they stopped instead of
starting over (`clienthello.TlsReader` from the first record not yet consumed,
`http1.HeadReader` from the first byte not yet searched for the end of a line). The
TLS reader's `at_least` is accurate (the rest of the current record, or the smallest
framing of the handshake bytes still missing), so a hello dribbled byte by byte is
looked at a handful of times per record; the HTTP reader can only ask for one more
byte, and each call then costs only the bytes that arrived since the last one.

Same three outcomes as every wire parser: a `Sniffed`, `NeedData`, or `ProtocolError`
("not-tls", "malformed", "too-large": `max_size` bytes are buffered and it still
cannot decide). `sniff(data, max_size)` is the one-shot form, for `snirelay hello`
and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from snirelay.wire.clienthello import ClientHello, TlsReader, parse_sslv2
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.http1 import HeadReader, HttpRequest

__all__ = ["Sniffed", "Sniffer", "sniff"]


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


class Sniffer:
    """Feed a new connection's first bytes as they arrive; decide once enough are buffered.

    `feed(chunk)` appends `chunk` to `data` and returns a `Sniffed` once the first
    message is complete, else `NeedData(at_least)` (the total buffered size it waits
    for), or raises `ProtocolError`. Once decided, further `feed` calls still append
    to `data` and return (or raise) the same decision.

    Resource handling: holds every byte fed (at most `max_size` plus one chunk before it
    decides); nothing else.
    """

    __slots__ = ("data", "max_size", "_need", "_reader", "_done", "_error")

    data: bytearray

    def __init__(self, max_size: int) -> None:
        self.data = bytearray()
        self.max_size = max_size
        self._need = 1  # do not ask the reader again before this many bytes
        self._reader: TlsReader | HeadReader | None = None
        self._done: Sniffed | None = None
        self._error: ProtocolError | None = None

    def feed(self, chunk: bytes) -> Sniffed | NeedData:
        """Take the next bytes the client sent; see the class docstring."""
        data = self.data
        data += chunk
        if self._done is not None:
            return self._done
        if self._error is not None:
            raise self._error
        n = len(data)
        limit = self.max_size
        if n < self._need and n < limit:
            return NeedData(self._need)
        try:
            res = self._step(data, limit)
            if isinstance(res, NeedData):
                if n >= limit:
                    raise ProtocolError(
                        "too-large", f"no decision within the first {limit} bytes ({n} buffered)"
                    )
                self._need = res.at_least
                return res
        except ProtocolError as exc:
            self._error = exc
            raise
        self._done = res
        return res

    def _step(self, data: bytearray, limit: int) -> Sniffed | NeedData:
        reader = self._reader
        if reader is None:
            first = data[0]
            if first & 0x80:  # SSLv2-compatible hello: one length, an exact at_least
                hello = parse_sslv2(data, limit)
                if isinstance(hello, NeedData):
                    return hello
                return Sniffed(hello.kind, None, False, hello, None)
            reader = self._reader = TlsReader() if first == 0x16 else HeadReader()
        if isinstance(reader, TlsReader):
            hello = reader.step(data, limit)
            if isinstance(hello, NeedData):
                return hello
            return Sniffed(hello.kind, hello.sni_normalized, hello.sni_is_ip, hello, None)
        req = reader.step(data, limit)
        if isinstance(req, NeedData):
            return req
        return Sniffed("http", req.host, req.host_is_ip, None, req)


def sniff(data: bytes, max_size: int = 65536) -> Sniffed | NeedData:
    """Classify the first bytes of a connection in one shot; see the module docstring."""
    if not data:
        return NeedData(1)
    return Sniffer(max_size).feed(data)
