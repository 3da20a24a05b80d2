"""The two ends of a relayed connection, behind one interface.

How it works
------------
A `Side` owns one end (the client's or the backend's): its socket and descriptor,
reading and writing, half-close, close, and a handshake step of its own. The phases
(net.phases) and the pump (net.pump) only talk to sides, so a TLS side (ssl.SSLObject
over memory BIOs) or a WebSocket side (wsproto) plugs in without a new branch in the
phases:

- readiness: the side's descriptor is watched through the poller; `buffered()` says
  how many bytes the side already holds decoded (a TLS record decrypted past what was
  asked for) that no readiness event will announce;
- `recv_into(buf)` / `send(data)`: the socket's calling convention (bytes moved, 0 =
  end of stream; `BlockingIOError` = try again when ready; `OSError` = the end failed);
- `unsent()`: bytes `send` accepted that are not on the socket yet (TLS ciphertext the
  socket did not take): the pump waits for writability and calls `send(b"")` to flush;
- `shutdown_write()`: half-close (a TCP FIN, a TLS close_notify, a WebSocket close);
- `close(reset)`: release everything; `reset` ends a TCP side with an RST;
- `handshake()`: None when the side needs none (raw TCP), else the object that runs it
  (TLS accept/connect, the WebSocket upgrade) as a phase of the connection.

`raw` says the side is a plain socket whose bytes can be spliced: the pump moves
bytes with `os.splice` when both sides are raw, through one bounded buffer per
direction otherwise. Byte counters are kept by the pump, one per direction, i.e. the
bytes each side has been handed for writing.

Resource handling: a side closes its socket exactly once; the connection that owns
both sides closes them when it ends, whatever phase it is in.
"""

from __future__ import annotations

import _socket
import socket
import struct
from typing import Any, Protocol

_LINGER0 = struct.pack("ii", 1, 0)


# What a side's handshake step answers: done, or what to wait for before the next step.
DONE, WANT_READ, WANT_WRITE = 0, 1, 2


class Handshake(Protocol):
    """A side's own handshake, run by the connection's handshake phase (TLS, ws)."""

    def step(self) -> int: ...  # DONE, WANT_READ or WANT_WRITE; OSError: it failed


class Side(Protocol):
    raw: bool
    kind: str  # "tcp", "tls", "ws": names the side's handshake in close reasons

    @property
    def tls(self) -> Any: ...  # the TLS side this side is or runs over (net.tls), or None

    @property
    def fd(self) -> int: ...

    def recv(self, n: int, /) -> bytes: ...  # for phases that look at bytes (sniff)
    def recv_into(self, buf: memoryview, /) -> int: ...
    def send(self, data: memoryview | bytes, /) -> int: ...
    def buffered(self) -> int: ...
    def unsent(self) -> int: ...  # bytes accepted by send() not yet on the socket
    def shutdown_write(self) -> None: ...
    def close(self, reset: bool = False) -> None: ...
    def handshake(self) -> Handshake | None: ...


class DecodingSide:
    """What the sides that decode their bytes (TLS, WebSocket) share: `recv` by way of
    their own `recv_into`."""

    __slots__ = ()

    def recv_into(self, buf: memoryview, /) -> int:
        raise NotImplementedError

    def recv(self, n: int, /) -> bytes:
        buf = bytearray(n)
        k = self.recv_into(memoryview(buf))
        return bytes(buf[:k])


class RawSide(_socket.socket):
    """A plain TCP socket that is its own side: `recv_into`/`send` are the socket's C
    methods, and an idle connection carries no extra object per end.

    It derives from the C socket type (`_socket.socket`), not from `socket.socket`,
    whose Python-level `__init__` and `close` cost two calls per socket and keep
    `makefile` state a side never uses. Construct it as the C type:
    `RawSide(family, type, proto, fileno)`."""

    __slots__ = ()

    raw = True
    kind = "tcp"
    tls = None  # no TLS side underneath (a TlsSide is its own; a WsSide's may be one)

    @property
    def fd(self) -> int:
        return self.fileno()

    def buffered(self) -> int:
        return 0

    def unsent(self) -> int:
        return 0

    def handshake(self) -> None:
        return None

    def shutdown_write(self) -> None:
        try:
            self.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is already gone; reading from it will say so

    def close(self, reset: bool = False) -> None:
        if reset:
            try:
                self.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass  # already reset or closed by the peer: nothing left to signal
        _socket.socket.close(self)
