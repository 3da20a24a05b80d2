"""The supervisor: with `workers = N > 1`, the parent process watches over N workers.

How it works:

- `snirelay.server.run` binds every address once (SO_REUSEPORT, not listening) and
  hands those sockets and the config (each port 0 replaced by the port it got) to
  `Supervisor`. The supervisor holds the sockets for its whole life: a socket that
  does not listen gets no connections, and holding it keeps the port, so a restarted
  worker binds the same one.
- It forks one worker per slot. A worker gets one end of a `socketpair`, the control
  channel (`snirelay.control`: framing, messages, what EOF means), closes every other
  descriptor of the supervisor's it inherited, moves into its own process group (a
  terminal's Ctrl-C then reaches the supervisor alone, which passes it on once, instead
  of reaching every worker twice), and serves (`worker(config, channel)`).
- The supervisor's loop is a `selectors` loop over the control channels and a
  self-pipe to which the signal module writes each signal's number
  (`signal.set_wakeup_fd`); the Python signal handlers do nothing, so all the work is
  done in the loop, one event at a time. The signals are blocked around each fork, so
  a child resets its handlers before any signal can run one and write to the pipe it
  shares with the supervisor.

Signals and deaths:

- SIGTERM/SIGINT: passed on to every worker; restarts still pending are dropped; the
  supervisor waits for the workers up to `drain_timeout + STOP_GRACE` seconds, then
  kills the ones left with SIGKILL. A second SIGTERM/SIGINT is passed on too (each
  worker then cuts what is left and exits at once) and shortens the wait to
  `STOP_GRACE`: the supervisor does not wait the drain out.
- SIGHUP: passed on to every worker, which reloads its config (snirelay.server); the
  supervisor reads it too, for the workers it starts later, and applies its `[log]` to
  its own lines (a log file it cannot open refuses the reload, as the workers do).
- Fan-outs for the admin API (served by the worker in slot 0): that worker asks every
  worker something (its figures, a reload) through the supervisor, which passes the
  question on and routes each answer back (`snirelay.control` has the messages). Frames
  to a worker that the channel does not take at once wait in the slot's buffer.
- SIGCHLD: reap. A worker that ends while the relay is not stopping is restarted, with
  one log line naming the pid, how it ended and the new pid. A death before the worker
  said "ready", or within `QUICK_DEATH` seconds of its start, is a quick death;
  after one, the restart waits `RESTART_BACKOFF` seconds, doubling with each quick
  death in a row up to `MAX_BACKOFF`. After `MAX_QUICK_DEATHS` in a row in one slot
  the supervisor gives up: it logs an error, stops the other workers and exits with
  the last worker's exit code (1 if it was killed by a signal).

Exit code: 0 when every worker stopped cleanly after a stop request (a worker killed
by the very signal passed on, before it installed its handlers, counts as clean),
else the worst worker's code (1 for a signal), and at least 1 when the supervisor gave
up on a slot or had to SIGKILL a worker. Workers that died and were restarted before
the stop do not change it: each death was logged.
"""

from __future__ import annotations

import dataclasses
import math
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from snirelay import control, sdnotify
from snirelay.config.model import Addr, Config, ConfigError
from snirelay.config.notes import error_lines
from snirelay.observe import log as logsetup
from snirelay.observe.log import LOG
from snirelay.startup import StartupError

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
QUICK_DEATH = 10.0  # seconds: a worker dying sooner after its start died quickly
MAX_QUICK_DEATHS = 5  # in a row, in one slot: give up
RESTART_BACKOFF = 0.25  # seconds before the restart after the first quick death
MAX_BACKOFF = 4.0
STOP_GRACE = 5.0  # seconds added to drain_timeout before stragglers get SIGKILL
TICK = 1.0  # the longest the loop sleeps (a backstop: SIGCHLD wakes it anyway)

WorkerMain = Callable[[Config, socket.socket, int], int]  # config, channel, slot index


def _noop(_signum: int, _frame: object) -> None:
    """The Python-level handler: the wake-up fd carries the signal to the loop."""


def describe_exit(code: int) -> str:
    """`os.waitstatus_to_exitcode` result -> "exited with code 3", "was killed by
    signal 9 (SIGKILL)"."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"was killed by signal {-code} ({name})"


class Slot:
    """One worker position: the current worker's pid and channel, and its history."""

    __slots__ = (
        "index",
        "pid",
        "channel",
        "framer",
        "started",
        "ready",
        "quick",
        "restart_at",
        "ended",
        "out",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0  # 0: no live worker in this slot
        self.channel: socket.socket | None = None
        self.framer = control.Framer("worker")
        self.started = 0.0
        self.ready = False
        self.quick = 0  # quick deaths in a row
        self.restart_at: float | None = None  # monotonic time of a pending restart
        self.ended = ""  # how the last worker ended, for the restart's log line
        self.out = bytearray()  # frames to the worker the channel did not take yet


class Supervisor:
    def __init__(
        self,
        config: Config,
        held: list[socket.socket],
        worker: WorkerMain,
        loader: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.loader = loader  # reads the config again on SIGHUP (for workers started later)
        self.held = held  # bound, not listening: they keep the ports
        self.worker = worker
        self.slots = [Slot(i) for i in range(config.workers)]
        self.sel = selectors.DefaultSelector()
        self.wake_r = self.wake_w = -1
        self.stopping = False
        self.stop_by = math.inf  # monotonic deadline for the workers to exit
        self.forwarded: set[int] = set()
        self.code = 0
        self.told_ready = False  # systemd heard READY=1 (once every first worker was ready)
        # fan-outs in flight: id -> (the asking slot, the pids still to answer)
        self.fanouts: dict[int, tuple[Slot, set[int]]] = {}

    # ---- life ----------------------------------------------------------------------------
    def run(self) -> int:
        """Fork the workers, supervise them until they have all exited; the exit code."""
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        old = {sig: signal.signal(sig, _noop) for sig in SIGNALS}
        old_fd = signal.set_wakeup_fd(self.wake_w)
        try:
            for slot in self.slots:
                self._spawn(slot)
            LOG.info("started %d workers: %s", len(self.slots), " ".join(self._pids()))
            return self._loop()
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            self._close_all()

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            due = [s.restart_at for s in self.slots if s.restart_at is not None]
            timeout = min(TICK, self.stop_by - now, *(t - now for t in due))
            for key, events in self.sel.select(max(0.0, timeout)):
                if key.data is None:
                    self._on_wake()
                    continue
                if events & selectors.EVENT_WRITE:
                    self._flush(key.data)
                if events & selectors.EVENT_READ:
                    self._on_channel(key.data)
            self._reap()
            if self.stopping:
                if not any(s.pid for s in self.slots):
                    return self.code
                if time.monotonic() >= self.stop_by:
                    self._kill_stragglers()
            else:
                self._restart_due()

    def _pids(self) -> list[str]:
        return [str(s.pid) for s in self.slots if s.pid]

    # ---- workers -------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> int:
        mine, theirs = socket.socketpair()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                mine.close()
                self._child(theirs, slot.index)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        theirs.close()
        mine.setblocking(False)
        slot.pid = pid
        slot.channel = mine
        slot.framer = control.Framer(f"worker {pid}")
        slot.started = time.monotonic()
        slot.ready = False
        slot.restart_at = None
        slot.out = bytearray()
        self.sel.register(mine, selectors.EVENT_READ, slot)
        return pid

    def _child(self, channel: socket.socket, slot_index: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            os.setpgid(0, 0)
            self._close_all()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            code = self.worker(self.config, channel, slot_index)
        except BaseException:
            LOG.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _close_all(self) -> None:
        """Close the channels, the held sockets, the selector and the wake-up pipe
        (in a new worker: its copies of them)."""
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.close()
                slot.channel = None
        for sock in self.held:
            sock.close()
        self.sel.close()
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1

    def _drop_channel(self, slot: Slot, pid: int = 0) -> None:
        """`pid`: the worker's, when `slot.pid` was already cleared."""
        if slot.channel is not None:
            self.sel.unregister(slot.channel)
            slot.channel.close()
            slot.channel = None
        slot.out = bytearray()
        self._forget_fanouts(slot, pid or slot.pid)

    # ---- frames to workers, and fan-outs ---------------------------------------------
    def _send(self, slot: Slot, msg: dict[str, Any]) -> None:
        """Queue one frame to the worker and write what the channel takes now; the rest
        goes out when it is writable (an answer can be megabytes)."""
        if slot.channel is None:
            return
        pending = bool(slot.out)
        slot.out += control.encode(msg)
        if not pending:
            self._flush(slot)

    def _flush(self, slot: Slot) -> None:
        sock = slot.channel
        if sock is None:
            return
        try:
            while slot.out:
                n = sock.send(slot.out)
                del slot.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            slot.out = bytearray()  # the worker is gone; waitpid will say how
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if slot.out else 0)
        self.sel.modify(sock, events, slot)

    def _fan_out(self, asker: Slot, msg: dict[str, Any]) -> None:
        """A worker (the one serving the admin API) asks every worker something
        ({"type": "fanout", "id": N, "ask": "snapshot" | "reload"}): pass the question to
        each live worker, the asker too; their answers go back to the asker one by one,
        then {"type": "answers-done", "id": N, "missing": [pids that died meanwhile]}."""
        fid = msg.get("id")
        ask = msg.get("ask")
        if not isinstance(fid, int) or ask not in ("snapshot", "reload"):
            LOG.warning("control: worker %d sent a bad fan-out: %r", asker.pid, msg)
            return
        if ask == "reload":
            self._reload()
        live = [s for s in self.slots if s.pid and s.channel is not None]
        self.fanouts[fid] = (asker, {s.pid for s in live})
        for slot in live:
            self._send(slot, {"type": "ask", "id": fid, "ask": ask})

    def _answer(self, slot: Slot, msg: dict[str, Any]) -> None:
        fid = msg.get("id")
        entry = self.fanouts.get(fid) if isinstance(fid, int) else None
        if entry is None:
            return  # late: the asker is gone
        asker, want = entry
        self._send(asker, {"type": "answer", "id": fid, "pid": slot.pid, "data": msg.get("data")})
        want.discard(slot.pid)
        if not want:
            del self.fanouts[entry_id(fid)]
            self._send(asker, {"type": "answers-done", "id": fid, "missing": []})

    def _forget_fanouts(self, gone: Slot, pid: int) -> None:
        """A worker's channel closed: its fan-outs end, and it is missing from others'."""
        for fid, (asker, want) in list(self.fanouts.items()):
            if asker is gone:
                del self.fanouts[fid]
            elif pid in want:
                want.discard(pid)
                if not want:
                    del self.fanouts[fid]
                    self._send(asker, {"type": "answers-done", "id": fid, "missing": [pid]})

    def _on_channel(self, slot: Slot) -> None:
        assert slot.channel is not None
        try:
            data = slot.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker is exiting; waitpid says how
            self._drop_channel(slot)
            return
        for msg in slot.framer.feed(data):
            if msg["type"] == "fanout":
                self._fan_out(slot, msg)
            elif msg["type"] == "answer":
                self._answer(slot, msg)
            elif msg["type"] == "ready":
                slot.ready = True
                LOG.info("worker %d ready: %s", slot.pid, _services(msg))
                if not self.told_ready and all(s.ready for s in self.slots):
                    self.told_ready = True
                    sdnotify.notify("READY=1")
            else:
                LOG.debug("control: ignoring %r from worker %d", msg["type"], slot.pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self._ended(slot, os.waitstatus_to_exitcode(status))
                    break

    def _ended(self, slot: Slot, code: int) -> None:
        old, slot.pid = slot.pid, 0
        self._drop_channel(slot, old)
        how = describe_exit(code)
        if self.stopping:
            if code < 0 and -code in self.forwarded:
                code = 0  # stopped by the signal passed on, before it installed handlers
            elif code:
                LOG.error("worker %d %s", old, how)
                code = max(code, 1)
            self.code = max(self.code, code)
            return
        now = time.monotonic()
        lived = now - slot.started
        slot.quick = slot.quick + 1 if (not slot.ready or lived < QUICK_DEATH) else 0
        slot.ended = f"worker {old} {how} after {lived:.1f}s"
        if slot.quick >= MAX_QUICK_DEATHS:
            LOG.error(
                "%s; %d quick deaths in a row (each within %.0fs of starting): giving up",
                slot.ended,
                slot.quick,
                QUICK_DEATH,
            )
            self.code = max(self.code, code if code > 0 else 1)
            self._stop(signal.SIGTERM, "a worker keeps dying")
            return
        if slot.quick == 0:
            self._restart(slot)
            return
        delay = min(MAX_BACKOFF, RESTART_BACKOFF * 2 ** (slot.quick - 1))
        LOG.error("%s; restarting it in %.2fs", slot.ended, delay)
        slot.restart_at = now + delay

    def _restart(self, slot: Slot) -> None:
        try:
            new = self._spawn(slot)
        except OSError as exc:
            LOG.error(
                "%s; cannot start a new worker: %s; retrying in %.0fs", slot.ended, exc, MAX_BACKOFF
            )
            slot.restart_at = time.monotonic() + MAX_BACKOFF
            return
        LOG.error("%s; started worker %d in its place", slot.ended, new)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.restart_at = None
                self._restart(slot)

    # ---- signals -------------------------------------------------------------------------
    def _on_wake(self) -> None:
        while True:
            try:
                data = os.read(self.wake_r, 512)
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._stop(signum, signal.Signals(signum).name)
                elif signum == signal.SIGHUP:
                    self._reload()
                    n = self._forward(signum)
                    LOG.info("SIGHUP: passed on to %d worker(s)", n)

    def _reload(self) -> None:
        """SIGHUP: each worker reloads itself; the supervisor keeps the new config for
        the workers it starts later (restarts), so they serve what the others serve.
        Endpoints added with port 0 get a port per worker (the supervisor holds only
        the ports bound at start)."""
        if self.loader is None:
            return
        sdnotify.notify("RELOADING=1")
        try:
            new = self.loader()
            if new.log != self.config.log:  # the supervisor's own lines follow [log] too
                logsetup.setup(new.log)
        except (ConfigError, StartupError) as exc:
            why = "; ".join(error_lines(exc)) if isinstance(exc, ConfigError) else str(exc)
            LOG.error("reload: %s (each worker refuses it too; the running config stays)", why)
            return
        finally:
            sdnotify.notify("READY=1")
        # an endpoint on port 0 keeps the port the first bind got (workers share it)
        got = {(ep.place, ep.listen.host): ep.listen.port for ep in self.config.endpoints}
        eps = tuple(
            dataclasses.replace(ep, listen=Addr(ep.listen.host, got[(ep.place, ep.listen.host)]))
            if ep.listen.port == 0 and (ep.place, ep.listen.host) in got
            else ep
            for ep in new.endpoints
        )
        self.config = dataclasses.replace(new, workers=self.config.workers, endpoints=eps)

    def _forward(self, sig: int) -> int:
        n = 0
        for slot in self.slots:
            if slot.pid:
                try:
                    os.kill(slot.pid, sig)
                    n += 1
                except ProcessLookupError:
                    pass
        return n

    def _stop(self, sig: int, why: str) -> None:
        self.forwarded.add(sig)
        n = self._forward(sig)
        now = time.monotonic()
        if not self.stopping:
            self.stopping = True
            sdnotify.notify("STOPPING=1")
            for slot in self.slots:
                slot.restart_at = None
            self.stop_by = now + self.config.drain_timeout + STOP_GRACE
            LOG.info("%s: stopping %d worker(s)", why, n)
        else:
            self.stop_by = min(self.stop_by, now + STOP_GRACE)
            LOG.warning("%s again: passed on to %d worker(s); they stop now", why, n)

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.pid:
                LOG.error("worker %d did not stop in time: SIGKILL", slot.pid)
                try:
                    os.kill(slot.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.code = max(self.code, 1)
        self.stop_by = math.inf  # SIGKILL cannot be caught: reaping follows


def _services(msg: dict[str, Any]) -> str:
    """The services of a "ready" message, for a log line."""
    out = []
    for svc in msg.get("services") or ():
        if isinstance(svc, dict):
            out.append(f"{svc.get('address')} ({svc.get('place')}, {svc.get('kind')})")
    return ", ".join(out) or "no services"


def entry_id(fid: object) -> int:
    assert isinstance(fid, int)
    return fid
