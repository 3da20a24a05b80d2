"""Asking one name server one question, over UDP or TCP (coroutines).

How it works: `query(server, name, qtype, protocol=..., timeout=...)` sends one query
built by `snirelay.wire.dns` and returns the `DnsResponse` that answers it.

- UDP: a new connected datagram socket per query (a fresh random source port, and the
  kernel drops datagrams from other sources) with a random 16-bit id. Datagrams that
  are not the answer to this query (wrong id, wrong question, garbage) are ignored and
  the wait goes on; the query is sent again once a third of the deadline has passed
  without an answer. An ICMP "port unreachable" ends the query at once.
- TCP: connect, write the framed query, read until one whole frame is buffered
  (`parse_tcp_frame`), close. The whole exchange shares the deadline.
- "tcp_and_udp": UDP first; an answer with the TC bit set is asked again over TCP,
  with what is left of the deadline (at least half a second).

Error handling: everything that goes wrong on the network is raised as `DnsError` (an
OSError) with a one-line message naming the server: timeout, refused, malformed answer.
A server's rcode is not an error here; the caller reads `DnsResponse.rcode`. Anything
else (a bug, e.g. in parsing an answer) is raised as it is, at once: it is neither
turned into a `DnsError` nor, for UDP, left to the loop's exception handler while the
query runs on into a timeout; the resolver logs it with the name and the server.

Resource handling: every socket is closed before the coroutine returns, also on
cancellation; nothing outlives the call.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from snirelay.config.model import Addr
from snirelay.wire.dns import DnsResponse, build_query, frame, parse_response, parse_tcp_frame
from snirelay.wire.errors import NeedData, ProtocolError

__all__ = ["DnsError", "query", "query_tcp", "query_udp"]

MIN_TCP_RETRY = 0.5


class DnsError(OSError):
    """A query that got no usable answer; `str()` is one line naming the server."""


class _UdpQuery(asyncio.DatagramProtocol):
    def __init__(self, qid: int, name: str, qtype: int, fut: asyncio.Future[DnsResponse]) -> None:
        self.qid = qid
        self.name = name
        self.qtype = qtype
        self.fut = fut
        self.bad: str | None = None  # why the last ignored datagram was ignored

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.fut.done():
            return
        try:
            res = parse_response(data, self.qid, self.name, self.qtype)
        except ProtocolError as e:
            self.bad = str(e)  # not our answer, or garbage: ignored, named on timeout
            return
        except Exception as e:  # a bug: the query fails with it, not with a timeout
            self.fut.set_exception(e)
            return
        self.fut.set_result(res)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc or ConnectionError("socket closed"))


async def query_udp(server: Addr, name: str, qtype: int, timeout: float) -> DnsResponse:
    """One question over UDP (see module doc). Raises DnsError."""
    loop = asyncio.get_running_loop()
    qid = int.from_bytes(os.urandom(2), "big")  # not `secrets`: 1 MB of imports
    msg = build_query(qid, name, qtype)
    fut: asyncio.Future[DnsResponse] = loop.create_future()
    proto = _UdpQuery(qid, name, qtype, fut)
    where = str(server)
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_datagram_endpoint(lambda: proto, remote_addr=(server.host, server.port)),
            timeout,
        )
    except (OSError, TimeoutError) as e:
        raise DnsError(f"{where}: cannot open UDP socket: {e}") from None
    try:
        deadline = loop.time() + timeout
        resend = timeout / 3
        transport.sendto(msg)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                why = f" (ignored: {proto.bad})" if proto.bad else ""
                raise DnsError(f"{where}: no answer over UDP within {timeout:g}s{why}")
            try:
                return await asyncio.wait_for(asyncio.shield(fut), min(resend, left))
            except TimeoutError:
                if not fut.done():
                    transport.sendto(msg)
            except OSError as e:
                raise DnsError(f"{where}: {e.strerror or e} (UDP)") from None
    finally:
        transport.close()
        if not fut.done():
            fut.cancel()


async def query_tcp(server: Addr, name: str, qtype: int, timeout: float) -> DnsResponse:
    """One question over TCP (see module doc). Raises DnsError."""
    qid = int.from_bytes(os.urandom(2), "big")  # not `secrets`: 1 MB of imports
    msg = frame(build_query(qid, name, qtype))
    where = str(server)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(msg)
            await writer.drain()
            buf = bytearray()
            while True:
                got = parse_tcp_frame(buf)
                if not isinstance(got, NeedData):
                    return parse_response(got[0], qid, name, qtype)
                chunk = await reader.read(got.at_least - len(buf))
                if not chunk:
                    raise DnsError(f"{where}: connection closed before a whole answer (TCP)")
                buf += chunk
    except TimeoutError:
        raise DnsError(f"{where}: no answer over TCP within {timeout:g}s") from None
    except ProtocolError as e:
        raise DnsError(f"{where}: bad answer (TCP): {e}") from None
    except DnsError:
        raise
    except OSError as e:
        raise DnsError(f"{where}: {e.strerror or e} (TCP)") from None
    finally:
        if writer is not None:
            writer.close()


async def query(
    server: Addr, name: str, qtype: int, *, protocol: str = "tcp_and_udp", timeout: float = 3.0
) -> DnsResponse:
    """Ask `server` for `name`/`qtype` by `protocol` ("udp", "tcp", "tcp_and_udp")."""
    if protocol == "tcp":
        return await query_tcp(server, name, qtype, timeout)
    loop = asyncio.get_running_loop()
    start = loop.time()
    res = await query_udp(server, name, qtype, timeout)
    if res.truncated and protocol == "tcp_and_udp":
        left = max(MIN_TCP_RETRY, timeout - (loop.time() - start))
        return await query_tcp(server, name, qtype, left)
    return res
