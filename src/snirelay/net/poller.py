"""The relay's own event loop core: one epoll set, watchers called straight from
`epoll_wait`, a few timers and a ready list.

Why a core of its own: a relayed connection is a handful of readiness events (a TLS
handshake in passthrough is about seven wakes), so what one wake costs is what a
connection costs. Here a wake is one `epoll_wait` and one Python loop over its events:
no second, nested epoll set under another loop's (two `epoll_wait` calls per wake), no
handle object per callback. Measured per wake with one ready socket
(`bench/loop_cost.py`: callgrind, user-space instructions, the callback's recv and
send included): 7.9k here, 8.3k through an epoll set nested in uvloop's (and a second
system call), 19.4k through the stock asyncio loop's `add_reader`.
`snirelay.net.loop.Loop` runs this core inside asyncio's selector, so the slow paths
(name lookups, signals, draining, the control channel) are still plain asyncio.

Why not `loop.add_reader` for the relay's sockets: besides the cost, when a socket
reports an error (a peer's RST, a refused connect), libuv stops the watcher and uvloop
closes it *without running the callback*; the connection then waits forever for an
event that never comes. Here an error or hang-up event runs the reader and the writer
callbacks, which then see the error from the system call itself.

How it works: `readers` and `writers` map a descriptor to its `Watcher` (the object,
not a bound method: nothing is allocated per call); one `epoll_ctl` per interest
change, nothing when the interest set is unchanged. `serve()` waits (level-triggered,
at most `MAX_EVENTS` events a wake: the rest come on the next one), calls the watchers,
then the timers that are due (`call_at`; a heap, cancelled lazily: the relay keeps one
or two, the timing wheel's among them), then the callbacks queued by `call_soon`, and
again, until told to return.

Resource handling: callers `forget` a descriptor before closing it (closing removes it
from the epoll set; no system call needed), or `remove_reader`/`remove_writer` to keep
it open unwatched. A stale event for a descriptor that was closed and reused in the same
batch only causes a spurious call, which every callback tolerates (the system call
returns EAGAIN).

Error handling: an `epoll_ctl` that fails is logged with the operation and the error
and aborts that descriptor's watchers only; a watcher, timer or queued callback that
raises is logged (a watcher's `abort()` then closes its connection); the loop goes on.
"""

from __future__ import annotations

import heapq
import itertools
import select
import time
from collections.abc import Callable
from typing import Protocol

from snirelay.observe.log import LOG


class Watcher(Protocol):
    """What the poller calls: `on_readable()` for readers, `on_writable()` for writers.
    Registering the object rather than a bound method allocates nothing per call.
    `abort()` runs if either raises: a bug in one connection closes that connection,
    never the loop."""

    def on_readable(self) -> None: ...
    def on_writable(self) -> None: ...
    def abort(self) -> None: ...


_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_READ_EVENTS = _IN | _ERR
_WRITE_EVENTS = _OUT | _ERR
# Events per wake: what is left is reported on the next wake (level-triggered), and a
# smaller buffer is cheaper per wake (1024 -> 128 saved ~2% of a round trip's instructions).
MAX_EVENTS = 128


class Timer:
    """A pending `call_at`; `cancel()` makes it a no-op (it leaves the heap when due)."""

    __slots__ = ("when", "cb")

    def __init__(self, when: float, cb: Callable[[], object]) -> None:
        self.when = when
        self.cb: Callable[[], object] | None = cb

    def cancel(self) -> None:
        self.cb = None


class Poller:
    __slots__ = ("ep", "readers", "writers", "ready", "timers", "_seq", "time")

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.readers: dict[int, Watcher] = {}
        self.writers: dict[int, Watcher] = {}
        self.ready: list[Callable[[], object]] = []
        self.timers: list[tuple[float, int, Timer]] = []  # heap; the int breaks ties
        self._seq = itertools.count()
        self.time = time.monotonic  # the clock of the timers (asyncio's loop.time too)

    def close(self) -> None:
        self.ep.close()
        self.readers.clear()
        self.writers.clear()
        self.ready.clear()
        self.timers.clear()

    # ---- readiness -----------------------------------------------------------------
    def _apply(self, fd: int, old: int, new: int) -> None:
        """One epoll_ctl for an interest change (the masks come from the two dicts,
        so no third per-descriptor table is kept).

        A failure is a bug or a descriptor closed under us: it is logged with the
        operation and the error, and only the watchers of that descriptor (their
        connection) are aborted; the loop goes on."""
        if new == old:
            return
        try:
            if not old:
                self.ep.register(fd, new)
            elif not new:
                self.ep.unregister(fd)
            else:
                self.ep.modify(fd, new)
        except OSError as exc:
            op = "add" if not old else "del" if not new else "mod"
            LOG.error(
                "epoll_ctl %s on descriptor %d failed: %s; closing its connection", op, fd, exc
            )
            watchers = {
                id(w): w for w in (self.readers.pop(fd, None), self.writers.pop(fd, None)) if w
            }
            for w in watchers.values():
                w.abort()

    def add_reader(self, fd: int, w: Watcher) -> None:
        readers = self.readers
        known = fd in readers
        readers[fd] = w
        if not known:
            out = _OUT if fd in self.writers else 0
            self._apply(fd, out, _IN | out)

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            out = _OUT if fd in self.writers else 0
            self._apply(fd, _IN | out, out)

    def add_writer(self, fd: int, w: Watcher) -> None:
        writers = self.writers
        known = fd in writers
        writers[fd] = w
        if not known:
            in_ = _IN if fd in self.readers else 0
            self._apply(fd, in_, in_ | _OUT)

    def remove_writer(self, fd: int) -> None:
        if self.writers.pop(fd, None) is not None:
            in_ = _IN if fd in self.readers else 0
            self._apply(fd, in_ | _OUT, in_)

    def set(self, fd: int, reader: Watcher | None, writer: Watcher | None) -> None:
        """Replace both callbacks of `fd` at once (one epoll_ctl at most)."""
        readers, writers = self.readers, self.writers
        old = (_IN if fd in readers else 0) | (_OUT if fd in writers else 0)
        if reader is None:
            readers.pop(fd, None)
        else:
            readers[fd] = reader
        if writer is None:
            writers.pop(fd, None)
        else:
            writers[fd] = writer
        self._apply(fd, old, (0 if reader is None else _IN) | (0 if writer is None else _OUT))

    def forget(self, fd: int) -> None:
        """Drop `fd` without a system call: the caller closes it next, and closing a
        descriptor removes it from the epoll set."""
        self.readers.pop(fd, None)
        self.writers.pop(fd, None)

    # ---- time and deferred calls ---------------------------------------------------
    def call_soon(self, cb: Callable[[], object]) -> None:
        """Call `cb()` after the watchers of this wake (or of the next one)."""
        self.ready.append(cb)

    def call_at(self, when: float, cb: Callable[[], object]) -> Timer:
        """Call `cb()` once `time()` reaches `when` (at most a millisecond late)."""
        timer = Timer(when, cb)
        heapq.heappush(self.timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, cb: Callable[[], object]) -> Timer:
        return self.call_at(self.time() + delay, cb)

    # ---- the loop ------------------------------------------------------------------
    def serve(self, end: float | None, stop: list[object]) -> None:
        """Wake after wake, call the watchers of the events, then the due timers, then
        the queued callbacks; return once `stop` is not empty (a watcher filed
        something there) or `time()` reaches `end` (None: no limit). One frame for the
        whole run: a wake costs one `epoll_wait` and this loop's body."""
        readers, writers, timers = self.readers, self.writers, self.timers
        read_events, write_events = _READ_EVENTS, _WRITE_EVENTS
        poll, clock = self.ep.poll, self.time
        now = 0.0
        while True:
            # The clock is read once before the wait (when something is due) and once
            # after it (a call each: a wake is a few dozen bytecodes in all).
            if self.ready:
                wait = 0.0
            else:
                due = timers[0][0] if timers else end
                if due is None:
                    wait = -1.0
                else:
                    if end is not None and end < due:
                        due = end
                    wait = due - clock()
                    if wait < 0:
                        wait = 0.0
            for fd, ev in poll(wait, MAX_EVENTS):
                w: Watcher | None = None
                try:
                    if ev & read_events:
                        w = readers.get(fd)
                        if w is not None:
                            w.on_readable()
                    if ev & write_events:
                        w = writers.get(fd)
                        if w is not None:
                            w.on_writable()
                except Exception:
                    LOG.exception("internal error on descriptor %d; closing its connection", fd)
                    if w is not None:
                        w.abort()
            if timers or end is not None:
                now = clock()
                if timers and timers[0][0] <= now:
                    self._run_timers(now)
            if self.ready:
                self._run_ready()
            if stop or (end is not None and now >= end):
                return

    def _run_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            cb = heapq.heappop(timers)[2].cb
            if cb is None:
                continue  # cancelled
            try:
                cb()
            except Exception:
                LOG.exception("internal error in a timer callback")

    def _run_ready(self) -> None:
        ready, self.ready = self.ready, []
        for cb in ready:
            try:
                cb()
            except Exception:
                LOG.exception("internal error in a deferred callback")
