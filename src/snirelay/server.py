"""The server: owns listeners and connections; start, drain, stop.

`run(config)` is the whole life of the process (or of each worker with `workers > 1`):

1. refuse what this build does not do yet (one line, exit 2), raise RLIMIT_NOFILE;
2. bind every listener (a failure is `StartupError` with exit code 3 naming the
   address and the OS error);
3. run the event loop (uvloop when importable) until SIGTERM/SIGINT;
4. stop accepting, let running transfers finish for up to `drain_timeout` seconds,
   close what is left, return 0.

With `workers = N > 1` the parent binds every address once (to report errors before
forking), then forks N workers; each binds its own SO_REUSEPORT listeners, so the kernel
spreads new connections across them. The parent forwards SIGTERM/SIGINT and waits.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import threading

from snirelay.config.model import Config
from snirelay.net.listener import Listener
from snirelay.net.runtime import Context, EndpointRT
from snirelay.net.sockopt import make_listener
from snirelay.observe import log as logsetup
from snirelay.observe.log import LOG


class StartupError(Exception):
    """An expected start-up failure: one line, and the exit code the CLI returns."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when importable (Linux), else the stock asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def unsupported(config: Config) -> str | None:
    """The first configured feature this build cannot serve yet, as a one-line error."""
    for ep in config.endpoints:
        for place, up in ep.upstreams():
            if up.listen_transport is not None:
                return f"{place}.listen_transport: transports are not supported yet"
            if up.remote_transport is not None:
                return f"{place}.remote_transport: transports are not supported yet"
            net = up.network
            if net.use_udp:
                return f"{place}.network.use_udp: UDP relaying is not supported yet"
            if net.send_proxy or net.accept_proxy:
                return f"{place}.network: the PROXY protocol is not supported yet"
    if config.api is not None:
        return "api: the admin API is not supported yet"
    return None


def raise_nofile(nofile: int | None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if nofile is None else nofile
    if want == soft:
        return
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (want, hard if hard >= want or hard < 0 else want)
        )
    except (ValueError, OSError) as exc:
        LOG.warning("cannot set the open-file limit to %d: %s", want, exc)


class Server:
    """Listeners and live connections of one process."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.ctx = Context(loop, config)
        self.endpoints = [EndpointRT(ep) for ep in config.endpoints]
        self.listeners: list[Listener] = []
        self.stopping: asyncio.Event | None = None

    def bind(self, reuse_port: bool = False, listen: bool = True) -> None:
        for ep in self.endpoints:
            if ep.cfg.upstream.network.no_tcp:
                continue
            try:
                sock = make_listener(
                    ep.cfg.listen,
                    ep.cfg.upstream.network,
                    ep.cfg.listen_interface,
                    reuse_port=reuse_port,
                    backlog=4096 if listen else None,
                )
            except OSError as exc:
                for lst in self.listeners:
                    lst.sock.close()
                raise StartupError(
                    f"cannot listen on {ep.cfg.listen} ({ep.cfg.place}): {exc.strerror or exc}",
                    3,
                ) from None
            self.listeners.append(Listener(self.ctx, ep, sock))

    async def serve(self) -> None:
        self.stopping = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self.stopping.set)
        for lst in self.listeners:
            lst.start()
            LOG.info("listening on %s (%s, tcp)", lst.name, lst.ep.cfg.place)
        self.ctx.start()
        await self.stopping.wait()
        await self.drain()

    async def drain(self) -> None:
        for lst in self.listeners:
            lst.close()
        conns = self.ctx.conns
        deadline = self.loop.time() + self.config.drain_timeout
        if conns:
            LOG.info(
                "stopping: %d connection(s) draining for up to %.0fs",
                len(conns),
                self.config.drain_timeout,
            )
        while conns and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(conns):
            conn.close("shutdown")
        self.ctx.close()  # lookups still running end now, not with the loop
        await asyncio.sleep(0)
        LOG.info("stopped")


def _serve(config: Config, reuse_port: bool) -> int:
    loop = new_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_loop_exception)
    try:
        server = Server(config, loop)
        server.bind(reuse_port)
        loop.run_until_complete(server.serve())
        return 0
    finally:
        loop.close()


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    exc = context.get("exception")
    LOG.error("internal error: %s", context.get("message"), exc_info=exc)  # type: ignore[arg-type]


def run(config: Config) -> int:
    """Run the relay until SIGTERM/SIGINT. Raises StartupError for expected failures."""
    logsetup.setup(config.log)
    problem = unsupported(config)
    if problem:
        raise StartupError(problem, 2)
    raise_nofile(config.nofile)
    if config.workers <= 1:
        return _serve(config, reuse_port=False)
    return _run_workers(config)


def _run_workers(config: Config) -> int:
    """Fork `config.workers` processes that each serve every listener (SO_REUSEPORT).

    The parent first binds every address without listening, so an unusable address
    fails before any fork and no connection is queued on a socket nobody accepts from.
    SIGTERM/SIGINT are blocked while forking so a signal in that window is forwarded
    to every worker instead of killing the parent alone. Exit code: 0 when every worker
    stopped cleanly, else the worst worker's code (1 for a worker killed by a signal).
    """
    probe = Server(config, asyncio.new_event_loop())
    probe.bind(reuse_port=True, listen=False)
    for lst in probe.listeners:
        lst.sock.close()
    probe.ctx.poller.close()
    probe.loop.close()
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    pids: list[int] = []
    forwarded: set[int] = set()
    try:
        for _ in range(config.workers):
            pid = os.fork()
            if pid == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                code = 1
                try:
                    code = _serve(config, reuse_port=True)
                except StartupError as exc:
                    print(f"snirelay: {exc}", file=sys.stderr)
                    code = exc.exit_code
                except BaseException:
                    LOG.exception("worker %d failed", os.getpid())
                finally:
                    os._exit(code)
            pids.append(pid)

        def forward(signum: int, _frame: object) -> None:
            forwarded.add(signum)
            for p in pids:
                try:
                    os.kill(p, signum)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    LOG.info("started %d workers: %s", len(pids), " ".join(map(str, pids)))
    worst = 0
    for p in pids:
        _, status = os.waitpid(p, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0 and -code in forwarded:
            code = 0  # stopped by the signal we passed on before it installed handlers
        elif code < 0:
            LOG.error("worker %d was killed by signal %d", p, -code)
            code = 1
        elif code:
            LOG.error("worker %d exited with code %d", p, code)
        worst = max(worst, code)
    return worst
