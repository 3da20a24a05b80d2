"""WebSocket sides: one end of a connection carried in WebSocket binary frames (realm's
`ws;host=H;path=P` transport), over a raw TCP side or a TLS side (wss).

How it works
------------
A `WsSide` wraps an inner side (net.sides `RawSide` or net.tls `TlsSide`) and has the
same `Side` interface, driven by the same readiness callbacks; the WebSocket protocol
itself is wsproto's (sans-IO): the upgrade by its `H11Handshake` (h11 underneath),
frames by its `FrameProtocol`. snirelay writes no framing of its own.

- `step()` (the side's handshake, run by the connection's handshake phase): the inner
  TLS handshake first when there is one, then the upgrade. Accepting, the request must
  be a valid WebSocket upgrade whose `Host` is `host=` and whose target is `path=`,
  both exactly (realm's rule); anything else is answered with an HTTP error (400 not
  an upgrade or not HTTP, 404 another path, 403 another host) and fails the handshake
  with `WsRefused`. Originating, the request carries `GET path` and `Host: host`; any
  answer but 101 fails it.
- `recv_into(buf)`: one read of the inner side, fed to the frame parser; the payload
  of binary (and text) frames is the byte stream, delivered as it arrives, a frame
  need not be whole (bounded memory: what one read decodes, at most). A ping is
  answered with a pong. Client frames must be masked, as RFC 6455 says; realm's client
  masks with a zero key, which is a masked frame like any other.
- `recv_view()`: the same payload without the copy into the reader's buffer: each
  read is kept as bytes and the frame parser hands out views of it (`_ViewBuffer`
  in place of wsproto's copying buffer); the pump sends them as they are
  (net.pump.ViewCopyDir).
- `send(data)`: at most `SEND_CHUNK` bytes as one binary frame; the frame bytes the
  inner side did not take wait in one backlog (`unsent()`), flushed by `send(b"")`.
- Half-close: `shutdown_write()` (the other side's TCP FIN) sends a Close frame and
  nothing more in this direction; the other direction keeps flowing (RFC 6455 lets the
  answering Close wait until the peer's own data is sent). A Close frame received, or
  the transport's EOF without one (how realm ends a stream), is the end of the peer's
  stream. Once both directions have ended, the inner side is shut down too (a FIN, or
  close_notify then FIN under TLS). So between two snirelays, or snirelay and realm,
  each direction ends on its own, and every byte arrives.

wsproto's `FrameProtocol` is reached through `Connection._proto` (the established
connection object keeps the bytes that followed the upgrade); wsproto's public
`Connection` refuses to send data after a Close was received, which half-close needs.
wsproto is pinned below 2 in pyproject.toml for that.

Masking (every client frame's payload is XORed with a 4-byte key) is the one place
wsproto is slow: its `XorMaskerSimple` runs `bytes.translate` over four strided slices,
~85 us per 64 KiB here, on both ends of a tunnel (the originating side masks, the
accepting side unmasks), which held a ws tunnel to 0.27x the plain TCP chain's
throughput. The websockets library's C `apply_mask` does the same in ~1.3 us, so
`_fast_masking()` puts a masker built on it in wsproto's place when that extension is
importable (wsproto looks its masker class up by name at each frame); without it
wsproto's own runs, slower and as correct.

Error handling: a malformed frame or a protocol violation raises `WsProtocolError` (an
`OSError`: the pump's error path ends the connection with a reset) after a Close frame
with the RFC's code is queued to the peer, best effort.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from snirelay.net.sides import DONE, WANT_READ, WANT_WRITE, DecodingSide

if TYPE_CHECKING:
    from snirelay.config.model import Transport
    from snirelay.net.sides import Handshake, Side


def _fast_masking() -> bool:
    """Mask and unmask with websockets' C `apply_mask` inside wsproto (see above); True
    when installed."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:  # a pure-Python websockets (or none): keep wsproto's masker
        return False
    from wsproto import frame_protocol

    class Masker:
        """wsproto's masker interface: `process` one chunk of a frame's payload after
        another, the key turned by what each chunk used of it."""

        __slots__ = ("key",)

        def __init__(self, key: bytes | bytearray) -> None:
            self.key = bytes(key)

        def process(self, data: bytes | bytearray) -> bytes:
            key = self.key
            out: bytes = apply_mask(data, key)
            turn = len(data) & 3
            if turn:
                self.key = key[turn:] + key[:turn]
            return out

    class Unmasked:
        """wsproto's null masker (frames from a server), returning bytes: the payload
        comes as a view of the read (`_ViewBuffer`), and wsproto adds to it as bytes."""

        __slots__ = ()

        def process(self, data: bytes | memoryview) -> bytes:
            return bytes(data)

    frame_protocol.XorMaskerSimple = Masker  # type: ignore[misc,assignment]
    frame_protocol.XorMaskerNull = Unmasked  # type: ignore[misc,assignment]
    return True


_FAST = _fast_masking()


def _keep_large_blocks() -> None:
    """Keep glibc's malloc from mapping and unmapping frame-sized blocks.

    A WebSocket side reads each frame into bytes of its own (128 KiB and a header),
    just above glibc's first mmap threshold (128 KiB): such a block is mapped and, once
    freed, unmapped, and the heap top above 128 KiB is trimmed, so reads keep faulting
    in fresh pages. Measured on a ws tunnel with 128 KiB frames: ~3 Gbit/s at ~3 CPU
    s/GB that way, ~8 Gbit/s at ~1.3 s/GB with blocks up to 1 MiB served from the heap
    and the heap trimmed only above 8 MiB. Done once per process when a ws transport is
    configured (this module is imported then); without glibc it does nothing."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc's
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 20)
    mallopt(m_trim_threshold, 8 << 20)


_keep_large_blocks()


class _ViewBuffer:
    """wsproto's frame decoder buffer (`frame_protocol.Buffer`: the same five methods),
    without its copies: wsproto's appends every read to a bytearray, slices each
    payload out of it (a copy) and deletes the consumed prefix (a move), three passes
    over every byte before the masker's own. This one keeps the read it was fed, as
    bytes, and hands out views of it; only a frame header cut by the end of a read is
    copied, joined to the next. With the masker above, a masked payload is copied once
    (unmasked into new bytes) and an unmasked one once (into bytes)."""

    __slots__ = ("view", "start", "used")

    def __init__(self) -> None:
        self.view = memoryview(b"")
        self.start = 0  # committed: consumed for good
        self.used = 0  # consumed since `start`, until commit() or rollback()

    def feed(self, data: bytes) -> None:
        if self.start < len(self.view):  # a header (or a control frame) cut by the read
            data = bytes(self.view[self.start :]) + data
        self.view = memoryview(data)
        self.start = 0

    def consume_at_most(self, nbytes: int) -> memoryview:
        i = self.start + self.used
        data = self.view[i : i + nbytes]
        self.used += len(data)
        return data

    def consume_exactly(self, nbytes: int) -> memoryview | None:
        if len(self.view) - self.start - self.used < nbytes:
            return None
        return self.consume_at_most(nbytes)

    def commit(self) -> None:
        self.start += self.used
        self.used = 0

    def rollback(self) -> None:
        self.used = 0

    def __len__(self) -> int:
        return len(self.view) - self.start


# Payload per binary frame sent, and bytes read from the inner side per recv: one
# whole frame as another snirelay sends it (the 14 bytes: a masked frame's header), so
# reads and the sends that pass them on stay aligned to frames. Measured on a ws
# tunnel here (see BENCHMARKS.md): 64 KiB frames ~0.6x the plain chain, 128 KiB ~0.75x
# (with _keep_large_blocks; 3 Gbit/s without it), 256 KiB no better than 128.
SEND_CHUNK = 128 * 1024
RECV_CHUNK = SEND_CHUNK + 14
# The read buffer of a pump direction toward a WebSocket side (net.pump.CopyDir): a
# frame's payload per read, so each send is one whole frame.
FRAME_VIEW = memoryview(bytearray(SEND_CHUNK))

# One receive buffer for the upgrade of every WebSocket side of the process (a
# single-threaded loop): its bytes are handed to h11 at once. Frames are read into
# bytes of their own, which the payload views keep (see _ViewBuffer).
_SCRATCH = memoryview(bytearray(RECV_CHUNK))
_CONTROL = (Opcode.PING, Opcode.PONG, Opcode.CLOSE)


class WsRefused(OSError):
    """The upgrade failed: the peer's request or answer was not the one configured."""


class WsProtocolError(OSError):
    """The peer broke the WebSocket protocol after the upgrade."""


class WsSide(DecodingSide):
    """A WebSocket end over `inner`, accepting (`server_side`) or originating."""

    __slots__ = (
        "inner",
        "tls",
        "fd",
        "host",
        "path",
        "server",
        "under",
        "hs",
        "started",
        "proto",
        "held",
        "nheld",
        "backlog",
        "ended",
        "closed_out",
        "refusal",
    )

    raw = False
    kind = "ws"

    def __init__(
        self, inner: Side, t: Transport, *, server_side: bool, initial: bytes | bytearray = b""
    ) -> None:
        """`t`: the transport (`host=`, `path=`); `initial`: bytes already read from the
        client (the sniffed request head)."""
        self.inner = inner
        self.tls = inner.tls  # the TLS side underneath (wss), for records
        self.fd = inner.fd
        assert t.host is not None and t.path is not None
        self.host, self.path = t.host, t.path
        self.server = server_side
        self.under: Handshake | None = inner.handshake()  # the inner TLS handshake, if any
        self.hs: H11Handshake | None = H11Handshake(
            ConnectionType.SERVER if server_side else ConnectionType.CLIENT
        )
        self.started = False  # originating: the request is queued
        self.proto: FrameProtocol | None = None
        # payload decoded and not yet delivered: the frames' own buffers, each copied
        # once, into the reader's buffer (`nheld`: their bytes)
        self.held: deque[memoryview] = deque()
        self.nheld = 0
        self.backlog: memoryview | None = None  # frame bytes the inner side did not take
        self.ended = False  # the peer's stream ended (its Close, or the transport's EOF)
        self.closed_out = False  # our Close is queued: no data frame may follow
        self.refusal: str | None = None  # accepting: why the upgrade was refused
        if initial:
            assert self.hs is not None
            self._receive_upgrade(bytes(initial))

    # ---- handshake -----------------------------------------------------------------
    def handshake(self) -> WsSide:
        return self

    def step(self) -> int:
        """Advance the inner TLS handshake, then the upgrade: DONE, or what to wait
        for. Raises WsRefused (after writing the HTTP error when accepting), ssl.SSLError
        from TLS underneath, or OSError."""
        if self.under is not None:
            want = self.under.step()
            if want != DONE:
                return want
            self.under = None
        hs = self.hs
        assert hs is not None
        if not self.server and not self.started:
            self.started = True
            self._queue(hs.send(Request(host=self.host, target=self.path)))
        while True:
            if self.refusal is not None:
                self._flush()  # the error response, best effort
                raise WsRefused(self.refusal)
            if not self._flush():
                return WANT_WRITE
            if self.proto is not None:
                self.hs = None
                return DONE
            try:
                k = self.inner.recv_into(_SCRATCH)
            except BlockingIOError:
                return WANT_READ
            if not k:
                raise ConnectionAbortedError("the peer closed during the WebSocket upgrade")
            self._receive_upgrade(bytes(_SCRATCH[:k]))

    def _receive_upgrade(self, data: bytes) -> None:
        hs = self.hs
        assert hs is not None
        try:
            hs.receive_data(data)
            events = list(hs.events())
        except RemoteProtocolError as exc:
            if self.server:
                self._refuse(400, f"not a WebSocket upgrade: {exc}")
                return
            raise WsRefused(f"the remote's answer to the upgrade is not HTTP: {exc}") from None
        for ev in events:
            if isinstance(ev, Request):
                if ev.target != self.path:
                    self._refuse(
                        404, f"the upgrade asked for path {ev.target!r}, not {self.path!r}"
                    )
                elif ev.host != self.host:
                    self._refuse(403, f"the upgrade asked for host {ev.host!r}, not {self.host!r}")
                else:
                    self._queue(hs.send(AcceptConnection()))
                    self._established(hs)
                return
            if isinstance(ev, AcceptConnection):
                self._established(hs)
                return
            if isinstance(ev, RejectConnection):
                raise WsRefused(f"the remote refused the upgrade: HTTP {ev.status_code}")

    def _established(self, hs: H11Handshake) -> None:
        conn: Any = hs.connection
        self.proto = proto = conn._proto  # holds any bytes that came after the upgrade
        if _FAST:
            decoder = proto._frame_decoder
            old = decoder.buffer
            decoder.buffer = _ViewBuffer()
            if len(old):
                decoder.buffer.feed(bytes(old.buffer))

    def _refuse(self, status: int, why: str) -> None:
        """Queue an HTTP error response to the client and remember why."""
        self.refusal = why
        body = f"{why}\n".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        assert self.hs is not None
        # h11 answers a request it could not parse too (its state allows the response)
        data = self.hs.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        self._queue(data + self.hs.send(RejectData(data=body)))

    # ---- reading -------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read and decode until payload is held; False at the end of the peer's stream.
        BlockingIOError: nothing (or only control frames) to read yet."""
        held = self.held
        while not held:
            if self.ended:
                return False
            data = self.inner.recv(RECV_CHUNK)  # BlockingIOError: nothing yet
            if not data:
                self._peer_ended()
                return False
            self._frames(data)  # payloads are views of it (see _ViewBuffer)
            if not held and not self.ended and not self.inner.buffered():
                raise BlockingIOError("only control frames arrived")
        return True

    def recv_view(self) -> memoryview:
        """The next decoded part of the stream as it is held, without a copy (for
        `pump.ViewCopyDir`): at most one frame's payload; empty at the end of the
        peer's stream; BlockingIOError when nothing is there yet."""
        if not self._fill():
            return memoryview(b"")
        part = self.held.popleft()
        self.nheld -= len(part)
        return part

    def recv_into(self, buf: memoryview, /) -> int:
        held = self.held
        if not self._fill():
            return 0
        # as many parts as fit: one read, one write on the other side (a frame that
        # straddles two socket reads arrives as two parts)
        n, room = 0, len(buf)
        while held and n < room:
            part = held[0]
            k = len(part)
            if k <= room - n:
                held.popleft()
            else:
                k = room - n
                held[0] = part[k:]
            buf[n : n + k] = part[:k]
            n += k
        self.nheld -= n
        return n

    def _frames(self, data: bytes) -> None:
        proto = self.proto
        assert proto is not None
        proto.receive_bytes(data)
        try:
            for frame in proto.received_frames():
                op = frame.opcode
                payload = frame.payload
                if op not in _CONTROL:
                    # text frames are passed on as their UTF-8 bytes
                    if isinstance(payload, str):
                        payload = payload.encode()
                    if payload:
                        self.held.append(memoryview(payload))  # type: ignore[arg-type]
                        self.nheld += len(payload)
                elif op is Opcode.PING:
                    if not self.closed_out:
                        self._queue(proto.pong(payload))  # type: ignore[arg-type]
                elif op is Opcode.CLOSE:
                    self._peer_ended()
                    break
        except ParseFailed as exc:
            if not self.closed_out:
                self.closed_out = True
                self._queue(proto.close(exc.code, str(exc)[:100]))
            try:
                self._flush()
            except OSError:
                pass
            raise WsProtocolError(f"WebSocket: {exc}") from None
        if self.backlog is not None:
            self._flush()  # a pong

    def _peer_ended(self) -> None:
        self.ended = True
        if self.closed_out:
            self._finish()

    def buffered(self) -> int:
        """Decoded payload not yet delivered, the inner side's own, and an end of
        stream still to report (a Close read behind data: no readiness event follows
        it)."""
        return self.nheld + self.inner.buffered() + self.ended

    # ---- writing -------------------------------------------------------------------
    def send(self, data: memoryview | bytes, /) -> int:
        if (self.backlog is not None or self.inner.unsent()) and not self._flush():
            raise BlockingIOError("WebSocket backlog not written yet")
        if not data:
            return 0
        proto = self.proto
        assert proto is not None and not self.closed_out
        chunk = data[:SEND_CHUNK]  # wsproto copies it into the frame
        self._queue(proto.send_data(chunk, True))  # type: ignore[arg-type]  # takes a view
        self._flush()
        return len(chunk)

    def unsent(self) -> int:
        return (len(self.backlog) if self.backlog is not None else 0) + self.inner.unsent()

    def _queue(self, data: bytes | bytearray) -> None:
        if self.backlog is not None:
            data = bytes(self.backlog) + data  # rare: a pong behind a blocked frame
        self.backlog = memoryview(data)

    def _flush(self) -> bool:
        """Hand the backlog to the inner side; True when all of it (and the inner
        side's own backlog) is on the socket."""
        inner = self.inner
        backlog = self.backlog
        try:
            while backlog is not None:
                k = inner.send(backlog)
                backlog = backlog[k:] if k < len(backlog) else None
            self.backlog = None
            if inner.unsent():
                inner.send(b"")
        except BlockingIOError:
            self.backlog = backlog
            return False
        return not inner.unsent()

    def shutdown_write(self) -> None:
        """The end of this direction: a Close frame (see the module docstring)."""
        if self.closed_out or self.proto is None:
            return
        self.closed_out = True
        self._queue(self.proto.close(CloseReason.NORMAL_CLOSURE))
        try:
            self._flush()
        except OSError:
            pass  # the peer is gone already; reading from it will say so
        if self.ended:
            self._finish()

    def _finish(self) -> None:
        """Both directions have ended: end the transport too, once the Close is out."""
        try:
            if self._flush():
                self.inner.shutdown_write()
        except OSError:
            pass  # the peer is gone already

    def close(self, reset: bool = False) -> None:
        self.inner.close(reset)
