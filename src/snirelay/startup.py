"""What is checked and bound before a relay serves (and again when it reloads): the
features this build refuses, the TLS files, the pre-connect hook library (loaded once,
here, at start), the open-file limit, the listening sockets, and the loader a reload
reads the config with. `snirelay.server` runs the relay on them; `snirelay explain`
refuses what `unsupported` refuses.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from snirelay.config.model import Addr, Config, ConfigError, Endpoint
from snirelay.config.network import NOFILE_MIN
from snirelay.net.runtime import EndpointRT, sniffs
from snirelay.net.sockopt import make_listener
from snirelay.observe.log import LOG

if TYPE_CHECKING:
    from snirelay.net.hook import Hook

DEFER_ACCEPT = 1  # seconds: TCP_DEFER_ACCEPT on listeners that sniff

Loader = Callable[[], Config]


class StartupError(Exception):
    """An expected start-up failure: one line, and the exit code the CLI returns."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def unsupported(config: Config) -> str | None:
    """The first configured feature this build cannot serve yet, as a one-line error."""
    for ep in config.endpoints:
        for place, up in ep.upstreams():
            net = up.network
            if net.use_udp and place == ep.place and not ep.upstream.remotes:
                return (
                    f"{place}.remote: use_udp needs the endpoint's own remote (UDP does"
                    " not route by name: a datagram carries none)"
                )
            if net.use_udp and place == ep.place and net.send_proxy and net.send_proxy_version == 1:
                return (
                    f"{place}.network.send_proxy_version: 1 cannot go with use_udp: a"
                    " datagram carries only a v2 header (set send_proxy_version = 2)"
                )
    if config.api is not None:
        from snirelay.api import check_listen

        return check_listen(config.api)
    return None


def raise_nofile(nofile: int | None) -> None:
    """Set the open-file limit (RLIMIT_NOFILE) to `nofile` (-n/--nofile, which the
    loader keeps between `config.network.NOFILE_MIN` and the kernel's nr_open), or raise
    the soft limit to the hard one. A limit that cannot be set (-n above the hard limit
    without the privilege to raise it) is a warning and the relay runs with the limit it
    has; so is a limit left below NOFILE_MIN (a hard limit that low, and no -n)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if nofile is None else nofile
    if want != soft:
        try:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (want, hard if hard >= want or hard < 0 else want)
            )
        except (ValueError, OSError, OverflowError) as exc:
            LOG.warning("cannot set the open-file limit to %d: %s", want, exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if 0 <= soft < NOFILE_MIN:
        LOG.warning(
            "the open-file limit is %d: below %d the relay fails connections with 'Too many"
            " open files' (raise the hard limit, ulimit -Hn)",
            soft,
            NOFILE_MIN,
        )


def check_tls(config: Config) -> None:
    """Build every TLS context once, before anything listens or forks: a bad certificate
    or key is exit code 2 naming the key and the file, and the start-up warnings are
    logged once (workers build their own contexts, silently)."""
    for ep in config.endpoints:
        try:
            EndpointRT(ep, warn=True)
        except ConfigError as exc:
            raise StartupError(str(exc), 2) from None


def check_hook(config: Config) -> Hook | None:
    """Load the `pre_conn_hook` library (net.hook), once, before anything listens or
    forks (workers inherit it); None when none is set. A missing file, one that is not
    a shared library, a missing symbol or a first-packet length above the cap is exit
    code 2 naming the key and the file."""
    if config.pre_conn_hook is None:
        return None
    from snirelay.net.hook import load

    try:
        return load(config.pre_conn_hook)
    except ConfigError as exc:
        raise StartupError(str(exc), 2) from None


def bind_all(
    config: Config, *, reuse_port: bool, listen: bool = True
) -> list[tuple[Endpoint, socket.socket]]:
    """One bound socket per endpoint that serves TCP, in config order (listening unless
    `listen` is false). On failure every socket bound so far is closed and
    `StartupError` (exit code 3) names the address and the OS error."""
    return bind_endpoints(
        [ep for ep in config.endpoints if not ep.upstream.network.no_tcp],
        reuse_port=reuse_port,
        listen=listen,
    )


def bind_endpoints(
    eps: Sequence[Endpoint], *, reuse_port: bool, listen: bool = True
) -> list[tuple[Endpoint, socket.socket]]:
    """A bound socket for each of `eps`, all or none (see `bind_all`)."""
    out: list[tuple[Endpoint, socket.socket]] = []
    for ep in eps:
        try:
            sock = make_listener(
                ep.listen,
                ep.upstream.network,
                ep.listen_interface,
                reuse_port=reuse_port,
                backlog=4096 if listen else None,
                # sniffing endpoints read the ClientHello at accept (net.phases.Sniff)
                defer_accept=DEFER_ACCEPT if sniffs(ep) else 0,
            )
        except OSError as exc:
            for _, s in out:
                s.close()
            raise StartupError(
                f"cannot listen on {ep.listen} ({ep.place}): {exc.strerror or exc}", 3
            ) from None
        out.append((ep, sock))
    return out


def with_bound_ports(config: Config, bound: Sequence[tuple[Endpoint, socket.socket]]) -> Config:
    """`config` with each port 0 replaced by the port its socket got, so every worker
    (and every restarted one) binds the same port the first bind chose."""
    got = {id(ep): sock.getsockname()[1] for ep, sock in bound}
    eps = tuple(
        dataclasses.replace(ep, listen=Addr(ep.listen.host, got[id(ep)]))
        if ep.listen.port == 0 and id(ep) in got
        else ep
        for ep in config.endpoints
    )
    return dataclasses.replace(config, endpoints=eps)


def udp_endpoints(config: Config) -> list[Endpoint]:
    return [ep for ep in config.endpoints if ep.upstream.network.use_udp]


def files_signature(config: Config) -> dict[str, tuple[int, int, int] | None]:
    """For each certificate, key and CA file the config names: (mtime ns, size, inode),
    or None when it cannot be read."""
    out: dict[str, tuple[int, int, int] | None] = {}
    for ep in config.endpoints:
        for _, up in ep.upstreams():
            for t in (up.listen_transport, up.remote_transport):
                if t is None:
                    continue
                for path in (t.cert, t.key, t.ca, t.client_cert, t.client_key, t.ocsp):
                    if path and path not in out:
                        try:
                            st = os.stat(path)
                        except OSError:
                            out[path] = None
                            continue
                        out[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def checked(loader: Loader) -> Loader:
    """`loader`, refusing (ConfigError) what the relay would refuse at start: a feature
    not built, a certificate or key that does not load. The supervisor keeps only such
    a config for the workers it starts later, so a reload the workers refuse cannot make
    every restarted worker fail."""

    def load() -> Config:
        config = loader()
        problem = unsupported(config)
        if problem:
            raise ConfigError("", problem)
        for ep in config.endpoints:
            EndpointRT(ep)  # ConfigError naming the file
        return config

    return load
