"""The server: the services of one process, their start, stop, drain and reload.

`run(config, loader)` is the whole life of the relay:

1. refuse what this build does not do yet (one line, exit 2), load the pre-connect
   hook library (`pre_conn_hook`, once: workers inherit it), raise RLIMIT_NOFILE;
2. bind every listener (a failure is `StartupError` with exit code 3 naming the
   address and the OS error);
3. with `workers = 1`, serve in this process; with `workers = N > 1`, hand the
   bound-but-not-listening sockets to `snirelay.supervisor.Supervisor`, which forks N
   workers that each serve (`_worker`) and watches over them.

Serving (`Server.serve`, in the single process or in each worker) runs the event loop
(`snirelay.net.loop`: asyncio with the relay's own epoll core inside): every service
(`snirelay.services`: one TCP listener per endpoint, and the admin API where `[api]` is
set: in the single process, or in the worker of slot 0, which gathers every worker's
figures through the supervisor) is started; in a worker, the supervisor is told "ready"
over the control channel (`snirelay.worker_link`, frames of `snirelay.control`); systemd is told READY=1 when it started
the relay (`snirelay.sdnotify`). Then:

- SIGHUP, or the API's POST /reload: `reload()` reads the config again through
  `loader` and switches to it (new endpoints listen, removed ones drain, the others
  serve new connections with the new settings and freshly read certificates; running
  connections go on as they are); an invalid config changes nothing. Certificate files
  are also watched (`_watch_files`) and read again when they change;
- SIGTERM/SIGINT (or, in a worker, the control channel closing: the supervisor is
  gone): every service stops taking new work and drains for up to `drain_timeout`
  seconds; at that deadline what is left is cut with a reset (`drain-timeout`); the
  API answers until the rest has drained (/healthz then says 503); the log says how
  many connections were drained and how many cut; `Context.close()` runs after the
  last connection closed; exit code 0;
- a second SIGTERM/SIGINT while draining cancels the drains: what is left is cut at
  once with a reset (`shutdown`) and the process exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from snirelay import sdnotify
from snirelay.config.model import Config, ConfigError, Endpoint
from snirelay.config.notes import error_lines
from snirelay.net.listener import Listener
from snirelay.net.loop import Loop, new_loop
from snirelay.net.runtime import Context, EndpointRT
from snirelay.observe import log as logsetup
from snirelay.observe.log import LOG
from snirelay.services import DRAIN_TIMEOUT, SHUTDOWN, Service
from snirelay.startup import (
    Loader,
    StartupError,
    bind_all,
    bind_endpoints,
    check_hook,
    check_tls,
    checked,
    files_signature,
    raise_nofile,
    udp_endpoints,
    unsupported,
    with_bound_ports,
)
from snirelay.supervisor import Supervisor
from snirelay.worker_link import SupervisorLink

if TYPE_CHECKING:
    from snirelay.net.hook import Hook

__all__ = ["Server", "StartupError", "run", "unsupported"]

API_GRACE = 1.0  # seconds the admin API's last requests get once relaying has stopped
CERT_POLL = 2.0  # seconds between looks at the certificate files (see Server._watch_files)


class Server:
    """The services and live connections of one process."""

    def __init__(
        self,
        config: Config,
        loop: Loop,
        control_sock: socket.socket | None = None,
        loader: Loader | None = None,
        *,
        serve_api: bool = True,
        slot: int = 0,
        hook: Hook | None = None,
    ) -> None:
        """`serve_api`: this process serves `[api]` (with workers: slot 0's); `slot`:
        the worker's slot (its metrics carry it as the `worker` label); `hook`: the
        pre-connect hook loaded at start (a reload keeps it: it takes a restart)."""
        self.config = config
        self.serve_api = serve_api
        self.slot = slot
        self.loop = loop
        self.ctx = Context(loop, config, hook=hook)
        self.endpoints = [EndpointRT(ep) for ep in config.endpoints]
        self.services: list[Service] = []
        self.stopping: asyncio.Event | None = None  # set: stop and drain
        self.hurry: asyncio.Event | None = None  # set: cut what is left now
        # a worker's end of its supervisor's channel (None: the single process)
        self.link: SupervisorLink | None = None
        if control_sock is not None:
            self.link = SupervisorLink(
                loop,
                control_sock,
                snapshot=self._worker_snapshot,
                reload=self.reload,
                on_gone=self._supervisor_gone,
            )
        self.loader = loader  # reads the config again (reload); None: cannot
        self.reuse_port = False
        self.retiring: set[asyncio.Task[int]] = set()  # drains of listeners a reload removed
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._files: dict[str, tuple[int, int, int] | None] = {}  # see _watch_files
        self._poll: asyncio.TimerHandle | None = None
        self.stats: Any = None  # observe.stats.Stats when the API is configured
        if config.api is not None:
            from snirelay.observe.stats import Stats

            self.stats = Stats(self.ctx, self.endpoints)
            self.ctx.add(self.stats)
            self.ctx.keep_addr = True  # the API lists client addresses

    @property
    def listeners(self) -> list[Listener]:
        """The TCP listeners among the services."""
        return [s for s in self.services if isinstance(s, Listener)]

    def bind(self, reuse_port: bool = False) -> None:
        self.reuse_port = reuse_port
        rt = {id(ep.cfg): ep for ep in self.endpoints}
        for cfg, sock in bind_all(self.config, reuse_port=reuse_port):
            self.services.append(Listener(self.ctx, rt[id(cfg)], sock))
        for ert in self.endpoints:
            if ert.cfg.upstream.network.use_udp:
                self.services.append(self._bind_udp(ert))

    def _bind_udp(self, ert: EndpointRT) -> Service:
        from snirelay.net.udp import UdpRelay, bind_udp

        try:
            sock = bind_udp(ert.cfg, self.reuse_port)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {ert.cfg.listen} ({ert.cfg.place}, udp): {exc.strerror or exc}",
                3,
            ) from None
        return UdpRelay(self.ctx, ert, sock)

    async def serve(self) -> None:
        self.stopping = asyncio.Event()
        self.hurry = asyncio.Event()
        if self.config.api is not None and self.serve_api:
            await self._open_api()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self._on_stop_signal, sig)
            self.loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        for svc in self.services:
            svc.start()
        if self.link is not None:
            self.link.ready(self.services)
        self._notify("READY=1")
        self._files = files_signature(self.config)
        self._poll = self.loop.call_later(CERT_POLL, self._watch_files)
        await self.stopping.wait()
        self._poll.cancel()
        self._notify("STOPPING=1")
        await self.drain()

    def _notify(self, state: str) -> None:
        """systemd's readiness protocol, from the single process only: with workers the
        supervisor speaks for the relay (the unit's NotifyAccess=main)."""
        if self.link is None:
            sdnotify.notify(state)

    async def _open_api(self) -> None:
        from snirelay.api import AdminApi
        from snirelay.observe.status import render

        assert self.config.api is not None
        listen = self.config.api.listen
        link = self.link
        if link is None:
            api = AdminApi(self.config, self._snapshot, self.reload, self._is_stopping, render)
        else:  # the whole relay's figures, gathered from every worker
            api = AdminApi(self.config, link.gathered, link.reload_all, self._is_stopping, render)
        try:
            await api.open()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {listen} (api): {exc.strerror or exc}", 3
            ) from None
        self.services.append(api)

    # ---- certificate files ---------------------------------------------------------
    def _watch_files(self) -> None:
        """Look at the certificate, key and CA files the config names every
        `CERT_POLL` seconds; when one changed (an ACME client renewed it), build every
        endpoint's TLS contexts again from the running config, so new handshakes get the
        new certificate. Running connections keep theirs. A broken new file (a key that
        does not match, a half-written PEM) is refused with a log line, the old
        certificate stays, and the same broken state is not retried until a file
        changes again."""
        if self._is_stopping():
            return
        sig = files_signature(self.config)
        if sig != self._files:
            self._files = sig
            try:
                self._apply(self.config, quiet=True)
                LOG.info("certificate files changed: new TLS handshakes use them")
            except (ConfigError, StartupError) as exc:
                LOG.error(
                    "certificate files changed but cannot be used: %s; the old ones stay", exc
                )
        self._poll = self.loop.call_later(CERT_POLL, self._watch_files)

    # ---- the admin API's figures ---------------------------------------------------
    async def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.stats.snapshot()
        return snap

    def _worker_snapshot(self) -> dict[str, Any] | None:
        """This worker's figures for a fan-out (None: no API configured)."""
        if self.stats is None:
            return None
        snap: dict[str, Any] = self.stats.snapshot()
        snap["slot"] = self.slot
        return snap

    def _supervisor_gone(self) -> None:
        assert self.stopping is not None
        if not self.stopping.is_set():
            LOG.warning("the supervisor is gone (control channel closed): stopping")
            self.stopping.set()

    def _is_stopping(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def _on_stop_signal(self, sig: int) -> None:
        assert self.stopping is not None and self.hurry is not None
        name = signal.Signals(sig).name
        if not self.stopping.is_set():
            LOG.info("%s: stopping", name)
            self.stopping.set()
        elif not self.hurry.is_set():
            LOG.warning("%s again: cutting what is left now", name)
            self.hurry.set()

    def _on_hup(self) -> None:
        LOG.info("SIGHUP: reloading the config")
        task = self.loop.create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- reload --------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Read the config again and apply it: new endpoints listen, removed ones stop
        accepting and drain, the others switch over for new connections (certificates
        and keys read again); running connections go on as they are. An invalid config
        changes nothing. Returns what the admin API answers: {"ok": true, "added": [...],
        "removed": [...], "switched": [...]} or {"ok": false, "error": "..."}."""
        async with self._reload_lock:
            if self._is_stopping():
                return {"ok": False, "error": "the relay is stopping"}
            if self.loader is None:
                return {"ok": False, "error": "this relay has no config to read again"}
            self._notify("RELOADING=1")
            try:
                return self._apply(self.loader())
            except (ConfigError, StartupError) as exc:
                why = "; ".join(error_lines(exc)) if isinstance(exc, ConfigError) else str(exc)
                LOG.error("reload refused: %s; the running config stays", why)
                return {"ok": False, "error": why}
            finally:
                self._notify("READY=1")

    @staticmethod
    def _running_key(lst: Listener) -> str:
        """A running listener's key: its configured address, or for port 0 the address
        it got (two port-0 listeners are two listeners)."""
        listen = lst.ep.cfg.listen
        return lst.address if listen.port == 0 else str(listen)

    def _listen_key(self, ep: Endpoint) -> str:
        """How a new endpoint is matched to a running listener: its listen address; an
        endpoint on port 0 at the same place and host as a running one is that one (it
        keeps the port it got; with workers, the running config holds that port); any
        other endpoint on port 0 is new."""
        if ep.listen.port == 0:
            for lst in self.listeners:
                cfg = lst.ep.cfg
                if cfg.place == ep.place and cfg.listen.host == ep.listen.host:
                    return self._running_key(lst)
            return f"{ep.listen} ({ep.place})"
        return str(ep.listen)

    def _apply(self, new: Config, quiet: bool = False) -> dict[str, Any]:
        """Switch to `new` (see `reload`); `quiet`: the same config, files read again
        (no start-up warnings again, no summary line)."""
        problem = unsupported(new)
        if problem:
            raise StartupError(problem, 2)
        for key in ("workers", "api", "dns", "pre_conn_hook"):
            if getattr(new, key) != getattr(self.config, key):
                LOG.warning("reload: %s changed: that takes a restart; kept as it was", key)
        if udp_endpoints(new) != udp_endpoints(self.config):
            LOG.warning("reload: UDP endpoints changed: they take a restart; kept as they run")
        if not quiet:
            for line in new.warnings:
                LOG.warning("config: %s", line)
        if new.log.output != self.config.log.output:  # StartupError before anything changes
            logsetup.open_output(new.log.output).close()
        rts = [EndpointRT(ep, warn=not quiet) for ep in new.endpoints]  # ConfigError: files
        running = {self._running_key(lst): lst for lst in self.listeners}
        wanted = {self._listen_key(rt.cfg): rt for rt in rts if not rt.cfg.upstream.network.no_tcp}
        fresh = [rt for key, rt in wanted.items() if key not in running]
        bound = bind_endpoints([rt.cfg for rt in fresh], reuse_port=self.reuse_port)  # all or none
        added, removed, switched = [], [], []
        deadline = self.loop.time() + new.drain_timeout
        for key, lst in running.items():
            rt = wanted.get(key)
            if rt is not None:
                lst.switch_to(rt)
                switched.append(key)
                continue
            lst.stop()
            self.services.remove(lst)
            task = self.loop.create_task(lst.drain(deadline))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)
            removed.append(key)
        for rt, (_, sock) in zip(fresh, bound, strict=True):
            lst = Listener(self.ctx, rt, sock)
            self.services.append(lst)
            lst.start()
            added.append(lst.address)
        if new.log != self.config.log:
            logsetup.setup(new.log)
        old = self.config  # what takes a restart stays as it runs
        self.config = dataclasses.replace(
            new, workers=old.workers, api=old.api, dns=old.dns, pre_conn_hook=old.pre_conn_hook
        )
        self.ctx.config = self.config
        self.endpoints[:] = rts  # the list the API's observer reads
        self._files = files_signature(self.config)
        if quiet:
            return {"ok": True, "added": added, "removed": removed, "switched": switched}
        LOG.info(
            "reloaded: %d endpoint(s) switched, %d added, %d removed (draining)",
            len(switched), len(added), len(removed),
        )  # fmt: skip
        return {"ok": True, "added": added, "removed": removed, "switched": switched}

    async def drain(self) -> None:
        """Stop every service, drain them all to one deadline, then release the
        shared resources. A set `hurry` (second signal) cancels the drains."""
        # The API goes on answering while the relay drains (/healthz says 503): it
        # stops after every other service.
        api = [svc for svc in self.services if svc.kind == "http"]
        relaying = [svc for svc in self.services if svc.kind != "http"]
        for svc in relaying:
            svc.stop()
        conns = self.ctx.conns
        counted: list[int] | None = None  # [drained, cut]: the connections running now
        if conns:
            LOG.info(
                "stopping: %d connection(s) draining for up to %.0fs",
                len(conns),
                self.config.drain_timeout,
            )
            counted = [0, 0]
            running = set(conns)

            def count(conn: Any, record: dict[str, Any]) -> None:
                if conn in running:
                    counted[record["close"] in (DRAIN_TIMEOUT, SHUTDOWN)] += 1

            self.ctx.on_closed.append(count)
        deadline = self.loop.time() + self.config.drain_timeout
        hurry = self.hurry if self.hurry is not None else asyncio.Event()
        tasks = [self.loop.create_task(svc.drain(deadline)) for svc in relaying]
        retiring = list(self.retiring)  # removed by a reload: draining to their own deadline
        hurried = self.loop.create_task(hurry.wait())
        try:
            pending: set[asyncio.Task[Any]] = set(tasks) | set(retiring)
            while pending and not hurried.done():
                _, pending = await asyncio.wait(
                    pending | {hurried}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(hurried)
            for task in pending:
                task.cancel()  # a cancelled drain cuts what is left at once
            if tasks or retiring:
                await asyncio.wait([*tasks, *retiring])
        finally:
            hurried.cancel()
        for svc in api:
            svc.stop()
            try:
                await svc.drain(self.loop.time() + (0 if hurry.is_set() else API_GRACE))
            except asyncio.CancelledError:
                pass
        for svc, task in zip(relaying, tasks, strict=True):
            if not task.cancelled() and task.exception() is not None:
                LOG.error(
                    "%s (%s): drain failed", svc.address, svc.place, exc_info=task.exception()
                )
        # Left only by a drain that failed (or a task cancelled before its first step):
        # cut them as a cancelled drain would.
        for conn in list(conns):
            conn.close("shutdown", reset=True)
        if counted is not None:
            LOG.info("stopping: %d connection(s) drained, %d cut", *counted)
        self.ctx.close()  # lookups still running end now, not with the loop
        if self.link is not None:
            self.link.close()
        await asyncio.sleep(0)
        LOG.info("stopped")


def _serve(
    config: Config,
    reuse_port: bool,
    control_sock: socket.socket | None = None,
    loader: Loader | None = None,
    api: bool = True,
    slot: int = 0,
    hook: Hook | None = None,
) -> int:
    loop = new_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_loop_exception)
    try:
        server = Server(config, loop, control_sock, loader, serve_api=api, slot=slot, hook=hook)
        server.bind(reuse_port)
        loop.run_until_complete(server.serve())
        return 0
    finally:
        loop.close()


def _worker(
    config: Config,
    control_sock: socket.socket,
    loader: Loader | None = None,
    index: int = 0,
    hook: Hook | None = None,
) -> int:
    """The body of one worker process (after the fork): serve with SO_REUSEPORT; the
    worker in slot 0 also serves the admin API, for the whole relay."""
    try:
        return _serve(
            config,
            reuse_port=True,
            control_sock=control_sock,
            loader=loader,
            api=index == 0,
            slot=index,
            hook=hook,
        )
    except StartupError as exc:
        print(f"snirelay: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:  # a config the supervisor let through: one line, not a trace
        print(f"snirelay: {exc}", file=sys.stderr)
        return 2


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    exc = context.get("exception")
    LOG.error("internal error: %s", context.get("message"), exc_info=exc)  # type: ignore[arg-type]


def run(config: Config, loader: Loader | None = None) -> int:
    """Run the relay until SIGTERM/SIGINT. `loader` reads the config again, for a
    reload (SIGHUP, the API's POST /reload). Raises StartupError for expected failures."""
    logsetup.setup(config.log)
    problem = unsupported(config)
    if problem:
        raise StartupError(problem, 2)
    check_tls(config)
    hook = check_hook(config)
    raise_nofile(config.nofile)
    if config.workers <= 1:
        return _serve(config, reuse_port=False, loader=loader, hook=hook)
    # Bind every address once, without listening, so an unusable address fails before
    # any fork; the supervisor keeps these sockets (they hold the ports, port 0 chosen
    # here) and workers bind the same ports with SO_REUSEPORT.
    bound = bind_all(config, reuse_port=True, listen=False)
    return Supervisor(
        with_bound_ports(config, bound),
        [s for _, s in bound],
        lambda cfg, channel, index: _worker(cfg, channel, loader, index, hook),
        checked(loader) if loader is not None else None,
    ).run()
