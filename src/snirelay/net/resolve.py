"""Remote-address resolution with a small TTL cache, callback style.

IP literals resolve synchronously (no executor round trip). Names go through
`loop.getaddrinfo` (the system resolver) once per cache lifetime; the cache holds at
most `dns.cache_size` names, each for `max(dns.min_ttl, 30)` seconds capped at
`dns.max_ttl` (the system resolver reports no TTL). `dns.mode` filters and orders the
addresses; every address is then tried in turn by the connector.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from snirelay.config.model import DnsConfig

SockTarget = tuple[int, tuple[str, int]]  # (family, (ip, port))
DEFAULT_TTL = 30.0


def literal(host: str, port: int) -> list[SockTarget] | None:
    """The target list for an IP literal, or None for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]


class Resolver:
    __slots__ = ("loop", "dns", "_cache", "_ttl", "_family")

    def __init__(self, loop: asyncio.AbstractEventLoop, dns: DnsConfig) -> None:
        self.loop = loop
        self.dns = dns
        self._cache: OrderedDict[str, tuple[float, list[tuple[int, str]]]] = OrderedDict()
        self._ttl = min(max(float(dns.min_ttl), DEFAULT_TTL), float(dns.max_ttl))
        self._family = {"ipv4_only": socket.AF_INET, "ipv6_only": socket.AF_INET6}.get(
            dns.mode, socket.AF_UNSPEC
        )

    def resolve(
        self, host: str, port: int, done: Callable[[list[SockTarget] | OSError], None]
    ) -> None:
        """Call `done` with the targets for host:port (maybe synchronously) or an OSError."""
        lit = literal(host, port)
        if lit is not None:
            done(lit)
            return
        hit = self._cache.get(host)
        now = self.loop.time()
        if hit is not None and hit[0] > now:
            done([(fam, (ip, port)) for fam, ip in hit[1]])
            return
        fut = self.loop.getaddrinfo(host, port, family=self._family, type=socket.SOCK_STREAM)
        task: asyncio.Future[list[Any]] = asyncio.ensure_future(fut)

        def finished(t: asyncio.Future[list[Any]]) -> None:
            exc = t.exception()
            if exc is not None:
                done(exc if isinstance(exc, OSError) else OSError(str(exc)))
                return
            addrs: list[tuple[int, str]] = []
            for info in t.result():
                fam, sa = info[0], info[4]
                assert isinstance(fam, int) and isinstance(sa, tuple)
                pair = (fam, str(sa[0]))
                if pair not in addrs:
                    addrs.append(pair)
            addrs = self._order(addrs)
            if not addrs:
                done(OSError(f"{host}: no address for dns.mode {self.dns.mode}"))
                return
            self._store(host, addrs)
            done([(fam, (ip, port)) for fam, ip in addrs])

        task.add_done_callback(finished)

    def _order(self, addrs: list[tuple[int, str]]) -> list[tuple[int, str]]:
        mode = self.dns.mode
        if mode == "ipv4_then_ipv6":
            return sorted(addrs, key=lambda a: a[0] != socket.AF_INET)
        if mode == "ipv6_then_ipv4":
            return sorted(addrs, key=lambda a: a[0] != socket.AF_INET6)
        return addrs

    def _store(self, host: str, addrs: list[tuple[int, str]]) -> None:
        if self._ttl <= 0 or self.dns.cache_size <= 0:
            return
        self._cache[host] = (self.loop.time() + self._ttl, addrs)
        self._cache.move_to_end(host)
        while len(self._cache) > self.dns.cache_size:
            self._cache.popitem(last=False)
