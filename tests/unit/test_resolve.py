"""Resolver: IP literals, the system path, and snirelay's own queries to
`dns.nameservers` against a small in-process DNS server on loopback (UDP and TCP):
modes, TTL clamping, LRU, shared misses, failover between servers, TC fallback.

Time in the cache is a `FakeClock` moved by the tests: no test sleeps through a TTL.
A zone can hold its answers until the test releases them (`Zone.release`), so
"while a lookup is in flight" is a state the test sets up, not a delay it guesses."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from helpers.clock import FakeClock
from helpers.wait import wait_until_async
from snirelay.config.model import Addr, DnsConfig
from snirelay.net import dns_client
from snirelay.net import resolve as resolve_mod
from snirelay.net.resolve import Resolver, SockTarget, literal
from snirelay.observe.log import LOG
from snirelay.wire.dns import AAAA, CNAME, A, encode_name, frame, parse_tcp_frame
from snirelay.wire.errors import NeedData

T = TypeVar("T")
V4, V6 = socket.AF_INET, socket.AF_INET6


def run(coro: Awaitable[T], timeout: float = 20) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# ---- a tiny authoritative server --------------------------------------------------------


@dataclass
class Zone:
    """name -> {qtype: [(ip, ttl)]}; names not listed get NXDOMAIN; `cname` aliases."""

    records: dict[str, dict[int, list[tuple[str, int]]]] = field(default_factory=dict)
    cname: dict[str, tuple[str, int]] = field(default_factory=dict)
    truncate_udp: bool = False  # answer UDP with TC and no records
    silent: bool = False  # never answer
    rcode: int | None = None  # answer everything with this rcode
    release: asyncio.Event | None = None  # when set: answer only once it is set
    queries: list[tuple[str, str, int]] = field(default_factory=list)  # (proto, name, qtype)

    def answer(self, query: bytes, proto: str) -> bytes | None:
        qid, _flags = struct.unpack_from("!HH", query)
        pos, labels = 12, []
        while query[pos]:
            labels.append(query[pos + 1 : pos + 1 + query[pos]].decode().lower())
            pos += 1 + query[pos]
        qname = ".".join(labels)
        qtype, _qclass = struct.unpack_from("!HH", query, pos + 1)
        question = query[12 : pos + 5]
        self.queries.append((proto, qname, qtype))
        if self.silent:
            return None
        flags = 0x8580  # QR AA RD RA
        answers = b""
        count = 0
        if self.rcode is not None:
            flags |= self.rcode
        elif proto == "udp" and self.truncate_udp:
            flags |= 0x0200
        else:
            owner = qname
            if owner in self.cname:
                target, ttl = self.cname[owner]
                answers += rr(owner, CNAME, ttl, encode_name(target))
                count += 1
                owner = target
            if owner not in self.records:
                flags |= 3
            for ip, ttl in self.records[owner].get(qtype, []) if owner in self.records else []:
                raw = socket.inet_pton(V4 if qtype == A else V6, ip)
                answers += rr(owner, qtype, ttl, raw)
                count += 1
        return struct.pack("!HHHHHH", qid, flags, 1, count, 0, 0) + question + answers


def rr(owner: str, typ: int, ttl: int, rdata: bytes) -> bytes:
    return encode_name(owner) + struct.pack("!HHIH", typ, 1, ttl, len(rdata)) + rdata


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: Any = None
        self.held: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.zone.answer(data, "udp")
        if reply is None or self.transport is None:
            return
        if self.zone.release is None:
            self.transport.sendto(reply, addr)
            return
        task = asyncio.ensure_future(self._later(self.zone.release, reply, addr))
        self.held.add(task)
        task.add_done_callback(self.held.discard)

    async def _later(self, release: asyncio.Event, reply: bytes, addr: Any) -> None:
        await release.wait()
        if self.transport is not None:
            self.transport.sendto(reply, addr)


async def serve(zone: Zone) -> tuple[Addr, Callable[[], Awaitable[None]]]:
    """Start UDP and TCP on one loopback port; return it and a closer."""
    loop = asyncio.get_running_loop()

    writers: set[asyncio.StreamWriter] = set()

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        buf = bytearray()
        try:
            while True:
                got = parse_tcp_frame(buf)
                if not isinstance(got, NeedData):
                    break
                chunk = await reader.read(got.at_least - len(buf))
                if not chunk:
                    return
                buf += chunk
            reply = zone.answer(got[0], "tcp")
            if reply is not None:
                if zone.release is not None:
                    await zone.release.wait()
                writer.write(frame(reply))
                await writer.drain()
            await reader.read(1)
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Udp(zone), local_addr=("127.0.0.1", port)
    )

    async def close() -> None:
        transport.close()
        server.close()
        for w in list(writers):
            w.close()
        await server.wait_closed()

    return Addr("127.0.0.1", port), close


def zone_backend(ttl: int = 120) -> Zone:
    return Zone(
        records={
            "backend.test": {A: [("127.0.0.1", ttl), ("127.0.0.2", ttl)], AAAA: [("::1", ttl)]}
        },
        cname={"alias.test": ("backend.test", 300)},
    )


async def ask(r: Resolver, host: str, port: int = 80) -> list[SockTarget] | OSError:
    fut: asyncio.Future[list[SockTarget] | OSError] = asyncio.get_running_loop().create_future()
    r.resolve(host, port, fut.set_result)
    return await fut


def dead_udp_port() -> int:
    """A loopback port nothing listens on (UDP and TCP both refuse)."""
    with socket.socket(V4, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- literals and the system path ---------------------------------------------------------


def test_literals_are_synchronous() -> None:
    assert literal("::1", 5) == [(V6, ("::1", 5))]
    assert literal("name", 5) is None
    got: list[object] = []

    async def main() -> None:
        r = Resolver(asyncio.get_running_loop(), DnsConfig(nameservers=(Addr("127.0.0.1", 9),)))
        r.resolve("127.0.0.1", 7, got.append)
        assert got == [[(V4, ("127.0.0.1", 7))]]  # before any await

    run(main())


def test_system_resolver_without_nameservers() -> None:
    async def main() -> None:
        clock = FakeClock()
        r = Resolver(asyncio.get_running_loop(), DnsConfig(mode="ipv4_only"), clock=clock)
        res = await ask(r, "localhost", 81)
        assert res == [(V4, ("127.0.0.1", 81))]
        assert r._cache["localhost"][0] == clock() + 30  # no TTL from the system: 30 s

    run(main())


# ---- own queries ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["udp", "tcp", "tcp_and_udp"])
def test_each_protocol(protocol: str) -> None:
    async def main() -> None:
        zone = zone_backend()
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), protocol=protocol)
            r = Resolver(asyncio.get_running_loop(), dns)
            res = await ask(r, "backend.test", 443)
            assert res == [
                (V4, ("127.0.0.1", 443)),
                (V4, ("127.0.0.2", 443)),
                (V6, ("::1", 443)),
            ]
            used = {p for p, _, _ in zone.queries}
            assert used == ({"udp"} if protocol != "tcp" else {"tcp"})
        finally:
            await close()

    run(main())


@pytest.mark.parametrize(
    "mode,expect,asked",
    [
        ("ipv4_only", ["127.0.0.1", "127.0.0.2"], [A]),
        ("ipv6_only", ["::1"], [AAAA]),
        ("ipv4_then_ipv6", ["127.0.0.1", "127.0.0.2"], [A]),
        ("ipv6_then_ipv4", ["::1"], [AAAA]),
        ("ipv4_and_ipv6", ["127.0.0.1", "127.0.0.2", "::1"], [A, AAAA]),
    ],
)
def test_modes(mode: str, expect: list[str], asked: list[int]) -> None:
    async def main() -> None:
        zone = zone_backend()
        server, close = await serve(zone)
        try:
            r = Resolver(asyncio.get_running_loop(), DnsConfig(nameservers=(server,), mode=mode))
            res = await ask(r, "alias.test")
            assert not isinstance(res, OSError), res
            assert [sa[0] for _, sa in res] == expect
            assert sorted(t for _, _, t in zone.queries) == sorted(asked)
        finally:
            await close()

    run(main())


def test_then_mode_falls_back_to_the_other_family() -> None:
    async def main() -> None:
        zone = Zone(records={"v6.test": {AAAA: [("2001:db8::5", 60)]}})
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), mode="ipv4_then_ipv6")
            res = await ask(Resolver(asyncio.get_running_loop(), dns), "v6.test")
            assert res == [(V6, ("2001:db8::5", 80))]
            assert [t for _, _, t in zone.queries] == [A, AAAA]
        finally:
            await close()

    run(main())


def test_nxdomain_is_one_line_and_stops() -> None:
    async def main() -> None:
        zone = zone_backend()
        server, close = await serve(zone)
        other = Zone(records={"nope.test": {A: [("10.9.9.9", 5)]}})
        server2, close2 = await serve(other)
        try:
            dns = DnsConfig(nameservers=(server, server2), mode="ipv4_then_ipv6")
            res = await ask(Resolver(asyncio.get_running_loop(), dns), "nope.test")
            assert isinstance(res, OSError)
            assert str(res) == f"nope.test: NXDOMAIN from {server}"
            assert "\n" not in str(res)
            assert len(zone.queries) == 1 and other.queries == []
        finally:
            await close()
            await close2()

    run(main())


def test_ttl_clamped_and_cached() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = FakeClock()
        zone = zone_backend(ttl=5)
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), mode="ipv4_only", min_ttl=60, max_ttl=100)
            r = Resolver(loop, dns, clock=clock, timeout=1)
            await ask(r, "backend.test")
            await close()  # the server is gone: answers come from the cache
            clock.advance(59)  # long past the record's own 5 s: min_ttl keeps it
            assert await ask(r, "BACKEND.test.", 8) == [
                (V4, ("127.0.0.1", 8)),
                (V4, ("127.0.0.2", 8)),
            ]
            assert len(zone.queries) == 1
            clock.advance(1)  # 60 s: expired, asked again, and nobody answers
            gone = await ask(r, "backend.test")
            assert isinstance(gone, OSError) and str(gone).startswith("backend.test: A: "), gone

            zone2 = zone_backend(ttl=100000)
            server2, close2 = await serve(zone2)
            dns2 = DnsConfig(nameservers=(server2,), mode="ipv4_only", max_ttl=100)
            r2 = Resolver(loop, dns2, clock=clock)
            await ask(r2, "alias.test")
            clock.advance(99)
            await ask(r2, "alias.test")
            assert len(zone2.queries) == 1  # still cached at 99 s
            clock.advance(1)
            await ask(r2, "alias.test")
            assert len(zone2.queries) == 2  # 100 s: max_ttl cut the 100000 s answer
            await close2()
        finally:
            await close()

    run(main())


def test_zero_ttl_is_not_cached_and_expiry_asks_again() -> None:
    async def main() -> None:
        clock = FakeClock()
        zone = zone_backend(ttl=0)
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), mode="ipv4_only")
            r = Resolver(asyncio.get_running_loop(), dns, clock=clock)
            await ask(r, "backend.test")
            await ask(r, "backend.test")
            assert len(zone.queries) == 2 and not r._cache
            zone.records["x.test"] = {A: [("10.0.0.2", 30)]}
            assert await ask(r, "x.test") == [(V4, ("10.0.0.2", 80))]
            zone.records["x.test"] = {A: [("10.0.0.3", 30)]}
            clock.advance(29)
            assert await ask(r, "x.test") == [(V4, ("10.0.0.2", 80))]  # cached
            clock.advance(1)
            assert await ask(r, "x.test") == [(V4, ("10.0.0.3", 80))]  # expired: asked again
        finally:
            await close()

    run(main())


def test_lru_keeps_cache_size_names() -> None:
    async def main() -> None:
        zone = Zone(records={f"h{i}.test": {A: [(f"10.0.0.{i}", 300)]} for i in range(4)})
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), mode="ipv4_only", cache_size=2)
            r = Resolver(asyncio.get_running_loop(), dns)
            await ask(r, "h0.test")
            await ask(r, "h1.test")
            await ask(r, "h0.test")  # a hit: h0 becomes the most recent
            await ask(r, "h2.test")  # evicts h1
            assert list(r._cache) == ["h0.test", "h2.test"]
            assert len(zone.queries) == 3
            r0 = Resolver(
                asyncio.get_running_loop(), DnsConfig(nameservers=(server,), cache_size=0)
            )
            await ask(r0, "h3.test")
            assert not r0._cache
        finally:
            await close()

    run(main())


def test_concurrent_misses_share_one_lookup() -> None:
    async def main() -> None:
        zone = zone_backend()
        zone.release = asyncio.Event()
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), mode="ipv4_only")
            r = Resolver(asyncio.get_running_loop(), dns)
            asks = [asyncio.ensure_future(ask(r, "backend.test", p)) for p in (1, 2, 3)]
            await wait_until_async(lambda: zone.queries, 5)  # the lookup is in flight
            zone.release.set()
            results = await asyncio.gather(*asks)
            assert [res[0][1][1] for res in results if not isinstance(res, OSError)] == [1, 2, 3]
            assert len(zone.queries) == 1
        finally:
            await close()

    run(main())


def test_failover_to_next_server_on_refused_timeout_and_servfail() -> None:
    async def main() -> None:
        silent = Zone(silent=True)
        failing = Zone(rcode=2)
        good = zone_backend()
        s_silent, c1 = await serve(silent)
        s_fail, c2 = await serve(failing)
        s_good, c3 = await serve(good)
        dead = Addr("127.0.0.1", dead_udp_port())
        try:
            dns = DnsConfig(nameservers=(dead, s_silent, s_fail, s_good), mode="ipv4_only")
            r = Resolver(asyncio.get_running_loop(), dns, timeout=0.3)
            res = await ask(r, "backend.test")
            assert res == [(V4, ("127.0.0.1", 80)), (V4, ("127.0.0.2", 80))]
            assert len(silent.queries) >= 2  # resent once within its deadline
            assert len(failing.queries) == 1 and len(good.queries) == 1

            dns = DnsConfig(nameservers=(dead, s_silent, s_fail), mode="ipv4_only", protocol="udp")
            res = await ask(Resolver(asyncio.get_running_loop(), dns, timeout=0.3), "backend.test")
            assert isinstance(res, OSError)
            msg = str(res)
            assert msg.startswith("backend.test: A: ") and "\n" not in msg
            assert f"{dead}: " in msg and "refused" in msg.lower()
            assert f"{s_silent}: no answer over UDP within 0.3s" in msg
            assert f"SERVFAIL from {s_fail}" in msg
        finally:
            for c in (c1, c2, c3):
                await c()

    run(main())


def test_truncated_udp_answer_is_asked_again_over_tcp() -> None:
    async def main() -> None:
        zone = zone_backend()
        zone.truncate_udp = True
        server, close = await serve(zone)
        try:
            dns = DnsConfig(nameservers=(server,), mode="ipv4_only")
            res = await ask(Resolver(asyncio.get_running_loop(), dns), "backend.test")
            assert not isinstance(res, OSError) and len(res) == 2
            assert [p for p, _, _ in zone.queries] == ["udp", "tcp"]

            zone.queries.clear()
            dns = DnsConfig(nameservers=(server,), mode="ipv4_only", protocol="udp")
            res = await ask(Resolver(asyncio.get_running_loop(), dns), "backend.test")
            assert isinstance(res, OSError) and "truncated" in str(res)
        finally:
            await close()

    run(main())


def test_invalid_name_and_no_address() -> None:
    async def main() -> None:
        zone = Zone(records={"empty.test": {}})
        server, close = await serve(zone)
        try:
            r = Resolver(asyncio.get_running_loop(), DnsConfig(nameservers=(server,)))
            bad = await ask(r, "a..b")
            assert isinstance(bad, OSError) and "empty label" in str(bad)
            none = await ask(r, "empty.test")
            assert isinstance(none, OSError)
            assert str(none) == "empty.test: no address for dns.mode ipv4_and_ipv6"
        finally:
            await close()

    run(main())


def test_close_fails_waiters() -> None:
    async def main() -> None:
        zone = Zone(silent=True)
        server, close = await serve(zone)
        try:
            r = Resolver(asyncio.get_running_loop(), DnsConfig(nameservers=(server,)), timeout=5)
            fut = asyncio.ensure_future(ask(r, "backend.test"))
            await wait_until_async(lambda: zone.queries, 5)  # the lookup is in flight
            r.close()
            res = await fut
            assert isinstance(res, OSError) and "cancelled" in str(res)
            assert not r._tasks
        finally:
            await close()

    run(main())


def test_client_ignores_foreign_datagrams() -> None:
    """A reply with another id is ignored; the real one (resent) is taken."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        zone = zone_backend()

        class Liar(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                reply = zone.answer(data, "udp")
                assert reply is not None
                wrong = bytes([reply[0] ^ 0xFF]) + reply[1:]
                self.t.sendto(wrong, addr)
                self.t.sendto(b"garbage", addr)
                self.t.sendto(reply, addr)

        t, _ = await loop.create_datagram_endpoint(Liar, local_addr=("127.0.0.1", 0))
        try:
            port = t.get_extra_info("sockname")[1]
            res = await dns_client.query(Addr("127.0.0.1", port), "backend.test", A, protocol="udp")
            assert res.addresses == (("127.0.0.1", 120), ("127.0.0.2", 120))
        finally:
            t.close()

    run(main())


# ---- errors: expected ones reported quietly, anything else logged -------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """What the "snirelay" logger writes at error level or above during the test."""
    handler = _Records()
    level = LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(logging.ERROR)
    try:
        yield handler.records
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)


def test_a_bug_asking_one_server_is_logged_and_the_next_is_asked(
    monkeypatch: pytest.MonkeyPatch, logged: list[logging.LogRecord]
) -> None:
    async def main() -> Addr:
        bad_zone, good_zone = zone_backend(), zone_backend()
        bad, close_bad = await serve(bad_zone)
        good, close_good = await serve(good_zone)
        real = dns_client.query

        async def buggy(server: Addr, *args: Any, **kw: Any) -> Any:
            if server == bad:
                raise ValueError("a bug in the client")
            return await real(server, *args, **kw)

        monkeypatch.setattr(resolve_mod, "query", buggy)
        try:
            dns = DnsConfig(nameservers=(bad, good), mode="ipv4_only")
            res = await ask(Resolver(asyncio.get_running_loop(), dns), "backend.test")
            assert res == [(V4, ("127.0.0.1", 80)), (V4, ("127.0.0.2", 80))]
            assert len(good_zone.queries) == 1
            return bad
        finally:
            await close_bad()
            await close_good()

    bad = run(main())
    (rec,) = logged
    assert rec.levelno == logging.ERROR and rec.exc_info is not None
    msg = rec.getMessage()
    assert msg.startswith(f"resolving backend.test (A) via {bad} failed: "), msg
    assert "a bug in the client" in msg


def test_a_bug_in_the_system_path_is_logged_and_reported(
    monkeypatch: pytest.MonkeyPatch, logged: list[logging.LogRecord]
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(loop, "getaddrinfo", broken)
        res = await ask(Resolver(loop, DnsConfig()), "backend.test")
        assert isinstance(res, OSError)
        assert str(res) == "backend.test: internal error (RuntimeError: boom)"

    run(main())
    (rec,) = logged
    assert rec.exc_info is not None
    assert "backend.test" in rec.getMessage() and "the system resolver" in rec.getMessage()


def test_system_resolver_failure_names_the_host_quietly(
    monkeypatch: pytest.MonkeyPatch, logged: list[logging.LogRecord]
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def unknown(*args: Any, **kw: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(loop, "getaddrinfo", unknown)
        res = await ask(Resolver(loop, DnsConfig()), "nope.test")
        assert isinstance(res, OSError)
        assert str(res) == "nope.test: Name or service not known (system resolver)"

    run(main())
    assert logged == []


def test_expected_failures_are_not_logged(logged: list[logging.LogRecord]) -> None:
    """NXDOMAIN, a timeout, a refusal and SERVFAIL reach the connection, not the error log."""

    async def main() -> None:
        silent, failing, zone = Zone(silent=True), Zone(rcode=2), zone_backend()
        s_silent, c1 = await serve(silent)
        s_fail, c2 = await serve(failing)
        s_zone, c3 = await serve(zone)
        dead = Addr("127.0.0.1", dead_udp_port())
        try:
            dns = DnsConfig(nameservers=(dead, s_silent, s_fail), protocol="udp")
            res = await ask(Resolver(asyncio.get_running_loop(), dns, timeout=0.3), "x.test")
            assert isinstance(res, OSError)
            dns = DnsConfig(nameservers=(s_zone,))
            res = await ask(Resolver(asyncio.get_running_loop(), dns), "nope.test")
            assert isinstance(res, OSError) and "NXDOMAIN" in str(res)
        finally:
            for c in (c1, c2, c3):
                await c()

    run(main())
    assert logged == []


def test_a_bug_parsing_a_udp_answer_is_raised_not_a_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> Any:
        raise IndexError("a bug in the parser")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, close = await serve(zone_backend())
        monkeypatch.setattr(dns_client, "parse_response", broken)
        try:
            start = loop.time()
            with pytest.raises(IndexError, match="a bug in the parser"):
                await dns_client.query(server, "backend.test", A, protocol="udp", timeout=3)
            assert loop.time() - start < 1  # at the first answer, not at the deadline
        finally:
            await close()

    run(main())
