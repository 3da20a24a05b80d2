"""The event loop of a relay process: asyncio, with the relay's own core inside it.

How it works
------------
`Loop` is a stock `asyncio.SelectorEventLoop` whose selector is `_Selector`: asyncio
registers its few descriptors (its self-pipe, which also carries signals, the control
channel, the DNS client's sockets) in the epoll set of the relay's core
(`net.poller.Poller`), and when asyncio asks the selector to wait, the selector runs
the core instead, turn after turn: every connection socket's event is served straight
from the core's `epoll_wait`, and the selector returns to asyncio only when one of
asyncio's descriptors is ready or asyncio's wait is over (its next timer). So the hot
path (accept, phases, pump, deadlines) never passes through asyncio's loop iteration,
and one wake is one `epoll_wait`; the cold paths (`serve()`, drains, name lookups,
signal handlers) stay plain asyncio code.

While the core runs, asyncio is inside its wait and would not see a callback or timer
scheduled by code the core calls (a phase starting a name lookup, a test setting a
future): so `Loop.call_soon` and `Loop.call_at` (which `call_later`, futures, tasks and
`asyncio.sleep` go through) also end the selector's wait, and asyncio runs them next.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Iterator, Mapping
from contextvars import Context
from typing import Any, TypeVarTuple

from snirelay.net.poller import Poller

_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE
_Ts = TypeVarTuple("_Ts")
_NUDGE: Any = object()  # filed in the selector's list: asyncio has work, return to it


def _fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        return fileobj
    try:
        return int(fileobj.fileno())
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"invalid file object: {fileobj!r}") from None


class _Map(Mapping[Any, selectors.SelectorKey]):
    """The selector's keys, looked up by descriptor or by file object."""

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys[_fd(fileobj)]

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)


class _Guest:
    """The core's watcher for one of asyncio's descriptors: it files the event for the
    selector to hand to asyncio."""

    __slots__ = ("sel", "key")

    def __init__(self, sel: _Selector, key: selectors.SelectorKey) -> None:
        self.sel = sel
        self.key = key

    def on_readable(self) -> None:
        self.sel.got.append((self.key, _R))

    def on_writable(self) -> None:
        self.sel.got.append((self.key, _W))

    def abort(self) -> None:  # a failed epoll_ctl: asyncio sees the error on its next use
        pass


class _Selector(selectors.BaseSelector):
    def __init__(self, core: Poller) -> None:
        self.core = core
        self.keys: dict[int, selectors.SelectorKey] = {}
        self.got: list[Any] = []  # (key, event) pairs for asyncio, or _NUDGE
        self.waiting = False  # inside select(): the core runs

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        if not events or events & ~(_R | _W):
            raise ValueError(f"invalid events: {events!r}")
        if fd in self.keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        if fd in self.core.readers or fd in self.core.writers:
            raise KeyError(f"descriptor {fd} is watched by the relay's core")
        return self._watch(fileobj, fd, events, data)

    def _watch(self, fileobj: Any, fd: int, events: int, data: Any) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self.keys[fd] = key
        guest = _Guest(self, key)
        self.core.set(fd, guest if events & _R else None, guest if events & _W else None)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        key = self.keys.pop(fd)
        self.core.set(fd, None, None)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        if fd not in self.keys:
            raise KeyError(f"{fileobj!r} is not registered")
        return self._watch(fileobj, fd, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return _Map(self.keys)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Run the core until one of asyncio's descriptors is ready or `timeout`
        seconds have passed (None: no limit)."""
        core = self.core
        end = None if timeout is None else core.time() + max(0.0, timeout)
        self.waiting = True
        try:
            core.serve(end, self.got)  # the guests' watchers file into self.got
        finally:
            self.waiting = False
        got, self.got = self.got, []
        return [g for g in got if g is not _NUDGE]

    def nudge(self) -> None:
        """asyncio got work from code the core called: end the wait after this wake."""
        if self.waiting and not self.got:
            self.got.append(_NUDGE)

    def close(self) -> None:
        for fd in list(self.keys):
            self.core.set(fd, None, None)
        self.keys.clear()


class Loop(asyncio.SelectorEventLoop):
    """asyncio's selector loop over the relay's core; `poller` is that core."""

    def __init__(self) -> None:
        self.poller = Poller()
        self._guest = _Selector(self.poller)
        super().__init__(self._guest)

    def call_soon(
        self,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.Handle:
        handle = super().call_soon(callback, *args, context=context)
        self._guest.nudge()
        return handle

    def call_at(
        self,
        when: float,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        self._guest.nudge()
        return handle

    def close(self) -> None:
        if self.is_closed():
            return
        super().close()
        self.poller.close()


def new_loop() -> Loop:
    return Loop()
