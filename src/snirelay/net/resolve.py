"""Remote-address resolution with a TTL cache, callback style.

IP literals resolve synchronously (no executor round trip). Names are looked up once
per cache lifetime, in one of two ways:

- no `dns.nameservers`: the system resolver (`loop.getaddrinfo`). It reports no TTL,
  so an answer is kept `max(dns.min_ttl, 30)` seconds capped at `dns.max_ttl`.
- with `dns.nameservers`: snirelay asks them itself (`snirelay.net.dns_client`) over
  `dns.protocol`. `dns.mode` says what is asked: A only, AAAA only, both at once
  (`ipv4_and_ipv6`, A addresses first), or one family and the other only when the
  first gave no address (`ipv4_then_ipv6`, `ipv6_then_ipv4`, as realm's resolver
  does). The name servers are tried in turn, each with its own deadline
  (`SERVER_TIMEOUT`); an answer with addresses, or a "no such name" answer
  (NXDOMAIN), ends the round. The answer is kept for its TTL (the lowest over the
  CNAME chain and the addresses) clamped to [dns.min_ttl, dns.max_ttl]. Failures are
  not cached.

The cache holds at most `dns.cache_size` names, least recently used out first
(0 = no cache). Concurrent misses for one name share one lookup. Every address is
then tried in turn by the connector. Expiry times are read from `clock` (the loop's
`time()` unless one is given: tests pass a fake clock and move it instead of
sleeping through a TTL).

Error handling: `done` gets either the targets or one OSError whose text is one line
saying what went wrong ("backend.test: NXDOMAIN from 127.0.0.1:53", "...: no answer
from 127.0.0.1:53 over UDP within 3s", "backend.test: Name or service not known
(system resolver)"); the connection logs it. Those are the expected failures and are
not logged here. Anything else raised while resolving (a bug, not a network answer)
is logged at error level with its traceback, the name and the server it was asked of
(or "the system resolver"): from one name server, that server counts as failed and the
next is asked; otherwise the waiters get "NAME: internal error (...)".

Resource handling: lookups run as tasks owned by the Resolver (`close()` cancels them
and fails their waiters); each lookup is bounded by the number of name servers times
SERVER_TIMEOUT (twice that for the `_then_` modes).
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from snirelay.config.model import DnsConfig
from snirelay.net.dns_client import DnsError, query
from snirelay.observe.log import LOG
from snirelay.wire.dns import AAAA, NOERROR, NXDOMAIN, A, encode_name, rcode_name
from snirelay.wire.names import ip_version

SockTarget = tuple[int, tuple[str, int]]  # (family, (ip, port))
Done = Callable[[list[SockTarget] | OSError], None]
DEFAULT_TTL = 30.0
SERVER_TIMEOUT = 3.0

_FAMILY = {A: socket.AF_INET, AAAA: socket.AF_INET6}
_PLAN: dict[str, tuple[tuple[int, ...], ...]] = {
    # steps in order; the types of one step are asked at once; a later step runs
    # only when the earlier ones gave no address
    "ipv4_only": ((A,),),
    "ipv6_only": ((AAAA,),),
    "ipv4_then_ipv6": ((A,), (AAAA,)),
    "ipv6_then_ipv4": ((AAAA,), (A,)),
    "ipv4_and_ipv6": ((A, AAAA),),
}


def literal(host: str, port: int) -> list[SockTarget] | None:
    """The target list for an IP literal, or None for a name."""
    version = ip_version(host)  # a name costs no parse (and no exception) there
    if version is None:
        return None
    return [(socket.AF_INET6 if version == 6 else socket.AF_INET, (host, port))]


class _Found:
    """Addresses of one name with the TTL they may be cached for (None: unknown)."""

    __slots__ = ("addrs", "ttl")

    def __init__(self, addrs: list[tuple[int, str]], ttl: float | None) -> None:
        self.addrs = addrs
        self.ttl = ttl


class Resolver:
    __slots__ = (
        "loop",
        "dns",
        "timeout",
        "clock",
        "_cache",
        "_ttl",
        "_family",
        "_pending",
        "_tasks",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dns: DnsConfig,
        *,
        timeout: float = SERVER_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.loop = loop
        self.dns = dns
        self.timeout = timeout
        self.clock: Callable[[], float] = loop.time if clock is None else clock
        self._cache: OrderedDict[str, tuple[float, list[tuple[int, str]]]] = OrderedDict()
        self._ttl = min(max(float(dns.min_ttl), DEFAULT_TTL), float(dns.max_ttl))
        self._family = {"ipv4_only": socket.AF_INET, "ipv6_only": socket.AF_INET6}.get(
            dns.mode, socket.AF_UNSPEC
        )
        self._pending: dict[str, list[tuple[int, Done]]] = {}
        self._tasks: set[asyncio.Task[_Found]] = set()

    def resolve(self, host: str, port: int, done: Done) -> None:
        """Call `done` with the targets for host:port (maybe synchronously) or an OSError."""
        lit = literal(host, port)
        if lit is not None:
            done(lit)
            return
        key = host.lower().rstrip(".") if self.dns.nameservers else host
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > self.clock():
                self._cache.move_to_end(key)
                done([(fam, (ip, port)) for fam, ip in hit[1]])
                return
            del self._cache[key]
        waiters = self._pending.get(key)
        if waiters is not None:
            waiters.append((port, done))
            return
        self._pending[key] = [(port, done)]
        coro = self._lookup_dns(key) if self.dns.nameservers else self._lookup_system(host)
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(key, t))

    def close(self) -> None:
        """Cancel running lookups; their waiters get an OSError."""
        for task in list(self._tasks):
            task.cancel()

    # ---- completion ----------------------------------------------------------------
    def _finished(self, key: str, task: asyncio.Task[_Found]) -> None:
        self._tasks.discard(task)
        waiters = self._pending.pop(key, [])
        res: _Found | OSError
        if task.cancelled():
            res = OSError(f"{key}: lookup cancelled")
        else:
            exc = task.exception()
            if exc is None:
                res = task.result()
            elif isinstance(exc, OSError):
                res = exc
            else:
                via = ", ".join(map(str, self.dns.nameservers)) or "the system resolver"
                LOG.error("resolving %s (via %s) failed: %r", key, via, exc, exc_info=exc)
                res = OSError(f"{key}: internal error ({type(exc).__name__}: {exc})")
        if isinstance(res, _Found):
            self._store(key, res)
        for port, done in waiters:
            if isinstance(res, OSError):
                done(res)
            else:
                done([(fam, (ip, port)) for fam, ip in res.addrs])

    def _store(self, key: str, found: _Found) -> None:
        ttl = self._ttl if found.ttl is None else found.ttl
        if ttl <= 0 or self.dns.cache_size <= 0:
            return
        self._cache[key] = (self.clock() + ttl, found.addrs)
        self._cache.move_to_end(key)
        while len(self._cache) > self.dns.cache_size:
            self._cache.popitem(last=False)

    # ---- system resolver -------------------------------------------------------------
    async def _lookup_system(self, host: str) -> _Found:
        try:
            infos: list[Any] = await self.loop.getaddrinfo(
                host, None, family=self._family, type=socket.SOCK_STREAM
            )
        except OSError as e:  # gaierror: no such name, no answer in time, ...
            raise OSError(f"{host}: {e.strerror or e} (system resolver)") from e
        addrs: list[tuple[int, str]] = []
        for info in infos:
            fam, sa = info[0], info[4]
            pair = (int(fam), str(sa[0]))
            if pair not in addrs:
                addrs.append(pair)
        addrs = self._order(addrs)
        if not addrs:
            raise OSError(f"{host}: no address for dns.mode {self.dns.mode}")
        return _Found(addrs, None)

    def _order(self, addrs: list[tuple[int, str]]) -> list[tuple[int, str]]:
        mode = self.dns.mode
        if mode == "ipv4_then_ipv6":
            return sorted(addrs, key=lambda a: a[0] != socket.AF_INET)
        if mode == "ipv6_then_ipv4":
            return sorted(addrs, key=lambda a: a[0] != socket.AF_INET6)
        return addrs

    # ---- own queries to dns.nameservers ----------------------------------------------
    async def _lookup_dns(self, name: str) -> _Found:
        try:
            encode_name(name)
        except ValueError as e:
            raise OSError(f"{name}: {e}") from None
        problems: list[str] = []
        for step in _PLAN.get(self.dns.mode, _PLAN["ipv4_and_ipv6"]):
            if len(step) == 1:
                results = [await self._ask(name, step[0])]
            else:
                results = list(await asyncio.gather(*(self._ask(name, t) for t in step)))
            addrs: list[tuple[int, str]] = []
            ttls: list[int] = []
            gone = False
            for qtype, got in zip(step, results, strict=True):
                if isinstance(got, str):
                    problems.append(got)
                    gone = gone or got.startswith("NXDOMAIN")
                    continue
                ttl, ips = got
                fam = _FAMILY[qtype]
                addrs.extend((fam, ip) for ip in ips if (fam, ip) not in addrs)
                if ttl is not None:
                    ttls.append(ttl)
            if addrs:
                low = min(ttls) if ttls else 0
                clamped = min(max(low, self.dns.min_ttl), self.dns.max_ttl)
                return _Found(addrs, float(clamped))
            if gone:
                break  # no such name: the other family will not exist either
        if not problems:
            problems.append(f"no address for dns.mode {self.dns.mode}")
        # one line: the distinct problems, in the order met
        raise OSError(f"{name}: " + "; ".join(dict.fromkeys(problems)))

    async def _ask(self, name: str, qtype: int) -> tuple[int | None, list[str]] | str:
        """(ttl, ips) from the first server that answers with addresses, an empty
        NOERROR answer or NXDOMAIN; or one line saying why none did."""
        kind = "A" if qtype == A else "AAAA"
        why: list[str] = []
        for server in self.dns.nameservers:
            try:
                res = await query(
                    server, name, qtype, protocol=self.dns.protocol, timeout=self.timeout
                )
            except DnsError as e:
                why.append(str(e))
                continue
            except Exception as e:  # a bug, not an answer: say so, then ask the next
                LOG.error("resolving %s (%s) via %s failed: %r", name, kind, server, e, exc_info=e)
                why.append(f"{server}: internal error ({type(e).__name__})")
                continue
            where = str(server)
            if res.rcode == NXDOMAIN:
                return f"NXDOMAIN from {where}"
            if res.rcode != NOERROR:
                why.append(f"{rcode_name(res.rcode)} from {where}")
                continue
            if res.addresses:
                return res.ttl, [ip for ip, _ in res.addresses]
            if res.truncated:
                why.append(f"truncated {kind} answer without addresses from {where}")
                continue
            return None, []  # the name exists without this type: no use asking others
        return f"{kind}: " + ", ".join(why) if why else f"{kind}: no name server"
