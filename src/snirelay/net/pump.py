"""The byte pump: one object per direction, driven by readiness callbacks (net.poller).

How it works
------------
A connection has two directions (client->backend "up", backend->client "down"). Each
direction reads one side (net.sides) and writes the other:

- `SpliceDir` (Linux, both sides raw sockets): socket -> pipe -> socket with
  `os.splice`, no bytes in Python objects. The pipe is empty
  whenever the source is being read, so `EAGAIN` from the first splice always means
  "the source has nothing", never "the pipe is full". Bytes the destination could not
  take stay in the pipe; the direction then stops reading its source (backpressure) and
  waits for the destination to become writable.
- `CopyDir`: any two sides (and the fallback where splice is missing): the source
  side's `recv_into` one read buffer shared by the process, then the destination's
  `send`; what the destination does not take is copied out and held by the direction
  (at most one chunk) until it is written: the bounded buffer per direction exists
  only while the direction is blocked.
  A side that holds decoded bytes no readiness event announces (`buffered()`, e.g. TLS)
  is read again from the loop instead of waiting for the next event.

Each callback moves up to `MAX_ROUNDS` chunks and stops at a short read (the poller is
level-triggered, so whatever is left, an error included, is reported again): one fast
stream cannot starve the others.

EOF from the source becomes `shutdown_write()` on the destination side (a TCP FIN)
while the other direction keeps flowing (half-close). When both directions are done
the owner (told through `pump_eof()`) closes everything; a socket error calls the
owner's `pump_failed(exc)`, which ends the connection with a reset on the other side
too, so a cut transfer never looks complete.

Resource handling: pipes come from a bounded `PipePool`, are held only while bytes
move, and go back to it only when empty; a direction never closes the sockets (its owner does).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Protocol

from snirelay.net.poller import Poller
from snirelay.net.sides import Side

SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
HAVE_SPLICE = hasattr(os, "splice")
F_SETPIPE_SZ = 1031
MAX_ROUNDS = 16  # chunks moved per readiness callback before yielding to the loop


class PumpOwner(Protocol):
    def pump_eof(self) -> bool: ...
    def pump_failed(self, exc: OSError) -> None: ...
    def abort(self) -> None: ...


class PipePool:
    """Reusable non-blocking pipe pairs of one size. Bounded: extras are closed."""

    __slots__ = ("size", "free", "limit")

    def __init__(self, pages: int = 16, limit: int = 512) -> None:
        self.size = pages * 4096
        # `free` is read directly by SpliceDir on its hot path (a pop, an append)
        self.free: list[tuple[int, int]] = []
        self.limit = limit

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.size != 65536:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, self.size)
            except OSError:
                pass  # over /proc/sys/fs/pipe-max-size: keep the default
        return r, w

    def put(self, pipe: tuple[int, int], clean: bool) -> None:
        if clean and len(self.free) < self.limit:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for r, w in self.free:
            os.close(r)
            os.close(w)
        self.free.clear()


class _Dir:
    """State shared by both pump kinds."""

    __slots__ = (
        "poller",
        "owner",
        "src",
        "dst",
        "sfd",
        "dfd",
        "pending",
        "nbytes",
        "reading",
    )

    def __init__(self, poller: Poller, owner: PumpOwner, src: Side, dst: Side) -> None:
        self.poller = poller
        self.owner = owner
        self.src = src
        self.dst = dst
        # The sides' descriptor ints: both directions (and the poller's dicts) share
        # the same int objects instead of allocating four.
        self.sfd = src.fd
        self.dfd = dst.fd
        self.pending = 0  # bytes read but not yet written
        self.nbytes = 0  # bytes delivered to dst
        self.reading = False  # the source's read watcher is registered

    def start(self) -> None:
        self._wait_read()

    def _wait_read(self) -> None:
        if not self.reading:
            self.poller.add_reader(self.sfd, self)
            self.reading = True

    def _eof(self) -> None:
        if not self.owner.pump_eof():
            return  # both directions are done: the owner closed the sockets
        if self.reading:
            self.poller.remove_reader(self.sfd)
            self.reading = False
        self.dst.shutdown_write()

    def _blocked(self) -> None:
        if self.reading:
            self.poller.remove_reader(self.sfd)
            self.reading = False
        self.poller.add_writer(self.dfd, self)

    def _unblocked(self) -> None:
        # Read again at once instead of waiting for the next poll: the source most
        # likely has data waiting (that is why this direction blocked).
        self.poller.remove_writer(self.dfd)
        self.on_readable()

    def abort(self) -> None:
        self.owner.abort()

    def on_readable(self) -> None:
        raise NotImplementedError

    def on_writable(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Give back per-direction resources (pipes, buffers)."""


class SpliceDir(_Dir):
    """Zero-copy direction: socket -> pipe -> socket.

    The pipe is borrowed from the pool only while bytes move: taken when the source is
    readable, given back as soon as it is empty again. An idle connection holds no pipe,
    so it costs two descriptors (its sockets), not six.
    """

    __slots__ = ("pool", "pipe")

    def __init__(
        self, poller: Poller, owner: PumpOwner, src: Side, dst: Side, pool: PipePool
    ) -> None:
        super().__init__(poller, owner, src, dst)
        self.pool = pool
        self.pipe: tuple[int, int] | None = None  # (read end, write end) while borrowed

    def on_readable(self) -> None:
        pool = self.pool
        pipe = self.pipe
        if pipe is None:
            free = pool.free
            if free:
                pipe = free.pop()
            else:
                try:
                    pipe = pool.get()
                except OSError as exc:
                    self.owner.pump_failed(exc)
                    return
            self.pipe = pipe
        pr, pw = pipe
        splice = os.splice
        sfd, dfd, chunk = self.sfd, self.dfd, pool.size
        try:
            for _ in range(MAX_ROUNDS):
                n = splice(sfd, pw, chunk, None, None, SPLICE_FLAGS)
                if n == 0:
                    self.release()
                    self._eof()
                    return
                self.pending = n  # the pipe holds data until it is written out
                try:
                    m = splice(pr, dfd, n, None, None, SPLICE_FLAGS)
                except BlockingIOError:
                    m = 0
                self.nbytes += m
                self.pending = n - m
                if self.pending:
                    self._blocked()  # keep the pipe: it holds the bytes
                    return
                if n < chunk:
                    break  # drained; level-triggered polling reports anything new
        except BlockingIOError:
            pass
        except OSError as exc:
            self.owner.pump_failed(exc)
            return
        free = pool.free
        if len(free) < pool.limit:
            free.append(pipe)  # empty again: back to the pool (PipePool.put, inlined)
        else:
            pool.put(pipe, True)
        self.pipe = None
        if not self.reading:
            self._wait_read()

    def on_writable(self) -> None:
        assert self.pipe is not None
        try:
            m = os.splice(self.pipe[0], self.dfd, self.pending, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self.owner.pump_failed(exc)
            return
        self.nbytes += m
        self.pending -= m
        if self.pending == 0:
            self._unblocked()

    def release(self) -> None:
        if self.pipe is not None:
            self.pool.put(self.pipe, clean=self.pending == 0)
            self.pipe = None


# One read buffer for every copy direction of the process (a single-threaded loop): a
# direction holds bytes of its own only while its destination does not take them, so an
# idle connection on the copy path costs no buffer (128 KiB per connection otherwise).
COPY_CHUNK = 65536
_COPY = memoryview(bytearray(COPY_CHUNK))


class CopyDir(_Dir):
    """Buffered direction: recv_into a reusable buffer, then send.

    A destination that keeps bytes of its own (`unsent()`: TLS ciphertext the socket
    did not take) counts as blocked until they are out: the direction waits for
    writability and flushes with `send(b"")`. At EOF the direction is done only once the
    destination's half-close is on the wire too (`closing`), so the connection never
    closes a side with its last records still queued."""

    __slots__ = ("held", "closing", "view", "unsent", "buffered")

    def __init__(
        self,
        poller: Poller,
        owner: PumpOwner,
        src: Side,
        dst: Side,
        view: memoryview = _COPY,
    ) -> None:
        """`view`: the read buffer, shared (the module's, or one sized to what the
        destination takes per send: a WebSocket side's frame)."""
        super().__init__(poller, owner, src, dst)
        self.held: memoryview | None = None  # what the destination did not take yet
        self.closing = False  # EOF passed on; waiting for the destination to flush
        self.view = view
        # a raw side never holds bytes of its own: no call per chunk to ask it
        self.unsent: Callable[[], int] | None = None if dst.raw else dst.unsent
        self.buffered: Callable[[], int] | None = None if src.raw else src.buffered

    def on_readable(self) -> None:
        view, held_by_src = self.view, self.buffered
        recv_into, send, unsent = self.src.recv_into, self.dst.send, self.unsent
        try:
            for _ in range(MAX_ROUNDS):
                n = recv_into(view)
                if n == 0:
                    self._eof()
                    return
                try:
                    m = send(view[:n])
                except BlockingIOError:
                    m = 0
                self.nbytes += m
                if m < n or (unsent is not None and unsent()):
                    # the shared buffer is the next read's: keep only what is left
                    self._hold(memoryview(bytes(view[m:n])) if m < n else None, n - m)
                    return
                if n < len(view) and (held_by_src is None or not held_by_src()):
                    # drained; level-triggered polling reports anything new
                    if not self.reading:  # `_wait_read`'s guard, inlined: mostly watched
                        self._wait_read()
                    return
        except BlockingIOError:
            pass
        except OSError as exc:
            self.owner.pump_failed(exc)
            return
        self._read_on()

    def _hold(self, held: memoryview | None, pending: int) -> None:
        """The destination did not take it all: wait for it to be writable."""
        self.held = held
        self.pending = pending
        self._blocked()

    def _read_on(self) -> None:
        """Done for this readiness event: watch the source again; if it holds decoded
        bytes (MAX_ROUNDS reached), no readiness event will announce them, so come back
        from the loop."""
        self._wait_read()
        self.kick()

    def start(self) -> None:
        self._wait_read()
        self.kick()

    def kick(self) -> None:
        """Come back from the loop if the source already holds bytes no readiness event
        will announce (a TLS side that read the first request with the handshake's
        last flight)."""
        held_by_src = self.buffered
        if held_by_src is not None and held_by_src():
            self.poller.call_soon(self._again)

    def _again(self) -> None:
        if self.reading:
            self.on_readable()

    def on_writable(self) -> None:
        dst = self.dst
        try:
            held = self.held
            m = dst.send(held if held is not None else b"")
        except BlockingIOError:
            return
        except OSError as exc:
            self.owner.pump_failed(exc)
            return
        self.nbytes += m
        self.pending -= m
        if self.pending:
            self.held = held[m:] if held is not None else None
            return
        self.held = None
        if dst.unsent():
            return
        if self.closing:
            self.poller.remove_writer(self.dfd)
            self.closing = False
            self.owner.pump_eof()
            return
        self._unblocked()

    def _eof(self) -> None:
        if self.reading:
            self.poller.remove_reader(self.sfd)
            self.reading = False
        self.dst.shutdown_write()
        if self.dst.unsent():  # the close_notify (or the last records) still queued
            self.closing = True
            self.poller.add_writer(self.dfd, self)
            return
        self.owner.pump_eof()

    def release(self) -> None:
        self.reading = False  # a pending `_again` finds nothing to do
        self.held = None


class ViewCopyDir(CopyDir):
    """A buffered direction from a side that holds what it decoded as views of its own
    (a WebSocket side: `recv_view()`, the payload as the frame parser left it): each
    part is sent as it is, one copy fewer per byte than reading it into the shared
    buffer; a part the destination does not take whole is kept as it is, too."""

    __slots__ = ()

    def on_readable(self) -> None:
        recv_view, send = self.src.recv_view, self.dst.send  # type: ignore[attr-defined]
        unsent = self.unsent
        try:
            for _ in range(MAX_ROUNDS):
                data = recv_view()
                n = len(data)
                if n == 0:
                    self._eof()
                    return
                try:
                    m = send(data)
                except BlockingIOError:
                    m = 0
                self.nbytes += m
                if m < n or (unsent is not None and unsent()):
                    self._hold(data[m:] if m < n else None, n - m)  # the part is ours to keep
                    return
        except BlockingIOError:
            pass
        except OSError as exc:
            self.owner.pump_failed(exc)
            return
        self._read_on()
