"""The measurements: each scenario runs one load against one running relay instance.

How it works: a ``Scenario`` names the relay mode it needs (``forward``, ``sni``,
``terminate``, ``reoriginate``, ``tunnel``, ``udp``), the backend it targets and the tools it
requires, and ``measure(inst, ctx)`` returns a flat dict of numbers. CPU figures are the
relay process tree's utime and stime across the load (from /proc/PID/stat, read just
before the load tool starts and just after it exits) divided by the work done: the total
(``cpu_us_per_conn``), and user and system apart (``..._user``, ``..._sys``). Checks
(``kind == "check"``) run once per relay before any timing and return ``ok``; a relay
that fails a check is marked and not timed in that mode.

To add a mode: give the relays a branch for it in ``relays.py``, then append
``Scenario`` entries here (with their checks); ``run.py`` and the report pick them up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import tlsload
from backends import (
    RELAY_NAME,
    REORIG_NAME,
    REVERSE_MAGIC,
    SNI_NAMES,
    STREAM_BYTES,
    UDP_MAX,
    Acceptor,
    Backends,
)
from common import LOOPBACK, BenchError, CpuMeter, tree_fds, tree_memory, which
from relays import TUNNEL, UDP, Instance


@dataclass
class Context:
    backends: Backends
    workdir: str
    duration: int
    quick: bool


Metrics = dict[str, float]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    mode: str
    kind: str  # "check" | "load"
    target: Callable[[Backends], int | Mapping[str, int] | None]
    measure: Callable[[Instance, Context], Metrics]
    tools: tuple[str, ...] = ()
    needs_relay_process: bool = False  # e.g. memory: nothing to measure on the direct path
    metrics: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------- checks


def _check_integrity(inst: Instance, ctx: Context) -> Metrics:
    """Send N MiB, SHUT_WR, expect sha256 + the same bytes back, then EOF."""
    size = (4 if ctx.quick else 16) << 20
    payload = os.urandom(1 << 20) * (size >> 20)
    want = hashlib.sha256(payload).digest() + payload
    with socket.create_connection((LOOPBACK, inst.port), timeout=20) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the reply must still come back
        got = bytearray()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(got) <= len(want):
            data = s.recv(1 << 20)
            if not data:
                break
            got += data
    if bytes(got) != want:
        if got[:32] != want[:32]:
            raise BenchError(f"integrity: sha256 mismatch or missing ({len(got)} bytes back)")
        raise BenchError(f"integrity: echo differs ({len(got)} of {len(want)} bytes back)")
    return {"ok": 1.0, "mib": size >> 20}


def _check_reverse(inst: Instance, ctx: Context) -> Metrics:
    """The backend sends N MiB and half-closes first; the client's bytes must still pass."""
    holder = ctx.backends.integrity
    assert holder is not None
    size = (4 if ctx.quick else 16) << 20
    holder.reverse_payload = os.urandom(1 << 20) * (size >> 20)
    mine = os.urandom(1 << 20) * (size >> 20)
    with holder.lock:
        holder.reverse_digests.clear()
    with socket.create_connection((LOOPBACK, inst.port), timeout=20) as s:
        s.sendall(REVERSE_MAGIC)
        got = bytearray()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(got) <= size:
            data = s.recv(1 << 20)
            if not data:
                break
            got += data
        if bytes(got) != holder.reverse_payload:
            raise BenchError(f"reverse: {len(got)} of {size} bytes from the backend, or altered")
        s.sendall(mine)  # after the backend's EOF: this direction must still flow
        s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not holder.reverse_digests:
            time.sleep(0.02)
    if holder.reverse_digests != [hashlib.sha256(mine).digest()]:
        raise BenchError("reverse: the backend did not get the client's bytes after its half-close")
    return {"ok": 1.0, "mib": size >> 20}


def _check_sni(inst: Instance, ctx: Context) -> Metrics:
    """Each server name reaches its own backend, certificate verified against the CA."""
    b = ctx.backends
    c = ssl.create_default_context(cafile=b.ca_pem)
    for name in SNI_NAMES:
        port = b.https_ports[name] if inst.proc is None else inst.port
        body = tlsload.fetch(port, name, c, timeout=10).decode(errors="replace").split()
        if body[:2] != [name, name]:
            raise BenchError(f"sni: {name} answered by {' '.join(body)!r}")
    return {"ok": 1.0}


def _check_tls_relay(want: Callable[[], list[str]]) -> Callable[[Instance, Context], Metrics]:
    """One HTTPS request to the relay as RELAY_NAME, its certificate verified against
    the run's CA (so the relay, not the backend, ended the TLS); the body must be the
    backend's (for ``reoriginate``: the backend's own name twice, the second being the
    SNI it saw from the relay)."""

    def measure(inst: Instance, ctx: Context) -> Metrics:
        b = ctx.backends
        c = ssl.create_default_context(cafile=b.ca_pem)
        body = tlsload.fetch(inst.port, RELAY_NAME, c, timeout=10).decode(errors="replace")
        if body.split() != want():
            raise BenchError(f"tls via relay: body {body!r}, want {' '.join(want())!r}")
        return {"ok": 1.0}

    return measure


UDP_CHECK_SIZES = (1200, 65000)  # bytes; 65,000 fits loopback's 65,536 MTU unfragmented


def _check_udp(inst: Instance, ctx: Context) -> Metrics:
    """One datagram of each of UDP_CHECK_SIZES to the relay, which the UDP echo sends
    back: it must come back whole and unchanged, from the relay's address (the client's
    socket is connected, so the kernel takes nothing from anywhere else). Up to 3 tries
    of 2 s each per size: a relay may lose a datagram (loopback rarely does), not cut one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((LOOPBACK, inst.port))
        s.settimeout(2.0)
        for size in UDP_CHECK_SIZES:
            payload = os.urandom(size)
            for _ in range(3):
                s.send(payload)
                try:
                    got = s.recv(UDP_MAX + 1)
                except TimeoutError:
                    continue
                if got != payload:
                    raise BenchError(f"udp: sent {size} bytes, got {len(got)} back, or altered")
                break
            else:
                raise BenchError(f"udp: no echo of a {size}-byte datagram in 3 tries")
    return {"ok": 1.0, "sizes": float(len(UDP_CHECK_SIZES))}


# ---------------------------------------------------------------- loads


def _iperf(streams: int) -> Callable[[Instance, Context], Metrics]:
    def measure(inst: Instance, ctx: Context) -> Metrics:
        argv = [which("iperf3") or "iperf3", "-c", LOOPBACK, "-p", str(inst.port)]
        argv += ["-t", str(ctx.duration), "-J", "-P", str(streams)]
        cpu = CpuMeter(inst.pid)
        cpu.start()
        out = subprocess.run(argv, capture_output=True, timeout=ctx.duration + 30, check=False)
        used = cpu.stop()
        try:
            res = json.loads(out.stdout)
            recv = res["end"]["sum_received"]
        except (ValueError, KeyError) as e:
            raise BenchError(f"iperf3 failed: {out.stdout[-300:]!r} {out.stderr[-300:]!r}") from e
        gb = recv["bytes"] / 1e9
        m = {"gbit_s": recv["bits_per_second"] / 1e9}
        if used is not None and gb > 0:
            m["cpu_s_per_gb"] = used / gb
            if cpu.system_share is not None:
                m["cpu_kernel_share"] = cpu.system_share
        return m

    return measure


UDP_LEN = 1200  # bytes per datagram in the UDP loads


def _udp_drops(ports: tuple[int, ...]) -> dict[tuple[int, int], int]:
    """{(port, inode): datagrams the kernel dropped on that socket (its receive buffer
    full)} for the UDP sockets bound to ``ports`` (any address: iperf3's server binds
    ``[::]``), from /proc/net/udp and udp6 (their last column)."""
    want = {f"{p:04X}": p for p in ports}
    out: dict[tuple[int, int], int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            port = want.get(fields[1].rpartition(":")[2])
            if port is not None:
                out[(port, int(fields[9]))] = int(fields[-1])
    return out


class _DropWatch(threading.Thread):
    """Drops at the UDP sockets on ``ports`` over a load: /proc/net/udp read every
    0.05 s, the last count of each socket kept. Some sockets close before the load ends:
    iperf3's server closes its data socket when the test ends, and socat's child (its
    socket bound to the listen port, connected to the client) exits on the refusal that
    follows. A socket that closed counts as last seen (at most 0.05 s of its drops may be
    missed); one that lives is read once more at the end."""

    def __init__(self, ports: tuple[int, ...]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.first = _udp_drops(ports)
        self.last = dict(self.first)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.last.update(_udp_drops(self.ports))

    def stop(self) -> dict[int, int]:
        """{port: datagrams dropped there since the start}."""
        self.done.set()
        self.join(2)
        self.last.update(_udp_drops(self.ports))
        out = dict.fromkeys(self.ports, 0)
        for (port, inode), n in self.last.items():
            out[port] += n - self.first.get((port, inode), 0)
        return out


def _udp_pps(inst: Instance, ctx: Context) -> Metrics:
    """iperf3 ``-u -b 0 -l 1200 -t D``: one client flow sending 1,200-byte datagrams as
    fast as it can, through the relay to the iperf3 server; the server's count of what
    arrived is the rate (``dgram_s``, ``mbit_s`` of payload) and ``loss_pct`` what did
    not. Where the loss happened, as shares of the sent datagrams, from the sockets'
    drop counters (``_DropWatch``): ``relay_drop_pct`` at the relay's listening socket
    (the relay did not read them in time), ``backend_drop_pct`` at the iperf3 server's
    (the relay forwarded them, the server did not read them in time: the sender, the
    relay and the server share the cores). So the relay forwarded ``fwd_dgram_s`` = what
    arrived plus what the server's socket dropped, and its CPU is divided by that
    (``cpu_us_per_kdgram``: µs per 1,000 datagrams forwarded)."""
    backend = ctx.backends.iperf_port
    assert backend is not None
    argv = [which("iperf3") or "iperf3", "-c", LOOPBACK, "-p", str(inst.port), "-u"]
    argv += ["-b", "0", "-l", str(UDP_LEN), "-t", str(ctx.duration), "-J"]
    watch = _DropWatch((backend,) if inst.proc is None else (inst.port, backend))
    cpu = CpuMeter(inst.pid)
    watch.start()
    cpu.start()
    try:
        out = subprocess.run(argv, capture_output=True, timeout=ctx.duration + 30, check=False)
    finally:
        used = cpu.stop()
        drops = watch.stop()
    try:
        end = json.loads(out.stdout)["end"]
        recv, sent = end.get("sum_received", end["sum"]), end.get("sum_sent", end["sum"])
        got = recv["packets"] - recv["lost_packets"]
        secs, n_sent = recv["seconds"], sent["packets"]
        m = {
            "dgram_s": got / secs,
            "mbit_s": recv["bytes"] * 8 / secs / 1e6,
            "loss_pct": float(recv["lost_percent"]),
            "sent_dgram_s": n_sent / sent["seconds"],
        }
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        raise BenchError(f"iperf3 -u failed: {out.stdout[-300:]!r} {out.stderr[-300:]!r}") from e
    if got <= 0 or n_sent <= 0:
        raise BenchError("iperf3 -u: no datagram reached the backend")
    forwarded = got + drops[backend]
    m["fwd_dgram_s"] = forwarded / secs
    m["backend_drop_pct"] = 100 * drops[backend] / n_sent
    if inst.proc is not None:
        m["relay_drop_pct"] = 100 * drops[inst.port] / n_sent
    if used is not None:
        m.update(cpu.per_unit("cpu_us_per_kdgram", forwarded / 1000))
    return m


UDP_RTT_MAX = 200_000  # round trips per load at most


def _udp_rtt(inst: Instance, ctx: Context) -> Metrics:
    """One 1,200-byte datagram at a time to the UDP echo through the relay, for D s
    (UDP_RTT_MAX round trips at most), each reply awaited 1 s at most (``lost``
    otherwise; a late reply is known by its sequence number and skipped): round trips/s,
    p50 and p99 in µs, and the relay's CPU per 1,000 datagrams relayed (two per round
    trip). One warm-up round trip first sets up the relay's association (socat's fork)."""
    filler = os.urandom(UDP_LEN - 8)
    rtts: list[float] = []
    lost = 0
    cpu = CpuMeter(inst.pid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((LOOPBACK, inst.port))
        s.settimeout(2.0)
        s.send(bytes(8) + filler)
        try:
            s.recv(UDP_MAX)
        except TimeoutError as e:
            raise BenchError("udp rtt: no echo of the warm-up datagram in 2 s") from e
        s.settimeout(1.0)
        cpu.start()
        start = time.perf_counter()
        end = start + ctx.duration
        for seq in range(1, UDP_RTT_MAX + 1):
            tag = seq.to_bytes(8, "big")
            t0 = time.perf_counter()
            if t0 > end:
                break
            s.send(tag + filler)
            try:
                while s.recv(UDP_MAX)[:8] != tag:  # a late reply to an earlier one
                    pass
                rtts.append(time.perf_counter() - t0)
            except TimeoutError:
                lost += 1
        elapsed = time.perf_counter() - start
        used = cpu.stop()
    if not rtts:
        raise BenchError(f"udp rtt: no echo came back ({lost} lost)")
    rtts.sort()
    m = {
        "rt_s": len(rtts) / elapsed,
        "rtt_p50_us": statistics.median(rtts) * 1e6,
        "rtt_p99_us": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1e6,
        "lost": float(lost),
    }
    if used is not None:
        m.update(cpu.per_unit("cpu_us_per_kdgram", 2 * len(rtts) / 1000))
    return m


def _ab(inst: Instance, ctx: Context) -> Metrics:
    """New connection per request (no keep-alive), 32 concurrent, percentiles from -e."""
    csv = f"{ctx.workdir}/ab-{inst.relay.name}.csv"
    argv = [which("ab") or "ab", "-q", "-r", "-c", "32", "-t", str(ctx.duration)]
    argv += ["-n", "400000", "-e", csv, f"http://{LOOPBACK}:{inst.port}/"]
    cpu = CpuMeter(inst.pid)
    cpu.start()
    out = subprocess.run(argv, capture_output=True, timeout=ctx.duration + 60, check=False)
    used = cpu.stop()
    text = out.stdout.decode(errors="replace")
    done = _grab(r"Complete requests:\s+(\d+)", text)
    failed = _grab(r"Failed requests:\s+(\d+)", text)
    rate = _grab(r"Requests per second:\s+([\d.]+)", text)
    if done is None or rate is None:
        raise BenchError(f"ab failed: {text[-300:]!r} {out.stderr[-300:]!r}")
    pct: dict[int, float] = {}
    with open(csv) as f:
        for line in f:
            k, _, v = line.strip().partition(",")
            if k.isdigit():
                pct[int(k)] = float(v)
    m = {"conn_s": rate, "p50_ms": pct.get(50, -1.0), "p99_ms": pct.get(99, -1.0)}
    m["failed"] = failed or 0.0
    if used is not None and done:
        m.update(cpu.per_unit("cpu_us_per_conn", done))
    return m


def _wrk(inst: Instance, ctx: Context, scheme: str = "http") -> Metrics:
    """Requests on 64 persistent connections, one wrk thread (``https``: over TLS)."""
    argv = [which("wrk") or "wrk", "-t", "1", "-c", "64", "-d", f"{ctx.duration}s"]
    argv += [f"{scheme}://{LOOPBACK}:{inst.port}/"]
    cpu = CpuMeter(inst.pid)
    cpu.start()
    out = subprocess.run(argv, capture_output=True, timeout=ctx.duration + 30, check=False)
    used = cpu.stop()
    text = out.stdout.decode(errors="replace")
    rate = _grab(r"Requests/sec:\s+([\d.]+)", text)
    total = _grab(r"(\d+) requests in", text)
    if rate is None or not total:
        raise BenchError(f"wrk failed: {text[-300:]!r} {out.stderr[-300:]!r}")
    m = {"req_s": rate}
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    m["errors"] = float(sum(int(x) for x in errs.groups())) if errs else 0.0
    if used is not None:
        m.update(cpu.per_unit("cpu_us_per_req", total))
    return m


def _idle(
    n: int, holder_of: Callable[[Backends], Acceptor | None] = lambda b: b.idle, tls: bool = False
) -> Callable[[Instance, Context], Metrics]:
    """N connections held open (``tls``: each completes a TLS handshake with the relay as
    RELAY_NAME, verified, then sends nothing); the relay's memory once the backend
    (``holder_of``) holds all N, and ``kb_per_conn`` = (that - before) / N."""

    def measure(inst: Instance, ctx: Context) -> Metrics:
        holder = holder_of(ctx.backends)
        assert holder is not None and inst.pid is not None
        holder.drop_held()
        tctx = ssl.create_default_context(cafile=ctx.backends.ca_pem) if tls else None

        def connect() -> socket.socket:
            raw = socket.create_connection((LOOPBACK, inst.port), timeout=10)
            if tctx is None:
                return raw
            try:
                return tctx.wrap_socket(raw, server_hostname=RELAY_NAME)  # handshake, 10 s max
            except BaseException:
                raw.close()
                raise

        if tctx is not None:  # one handshake first: lazily loaded TLS state is not per-conn
            connect().close()
            t = time.monotonic()
            while holder.accepted() < 1 and time.monotonic() - t < 5:
                time.sleep(0.02)
            holder.drop_held()
            time.sleep(0.3)
        before = tree_memory(inst.pid)
        fds_before = tree_fds(inst.pid)
        socks: list[socket.socket] = []
        deadline = time.monotonic() + 60
        try:
            for _ in range(n):
                if time.monotonic() > deadline:
                    raise BenchError(f"idle: only {len(socks)} of {n} connected in 60s")
                socks.append(connect())
            seen, progress = holder.accepted(), time.monotonic()
            while seen < n and time.monotonic() < deadline and time.monotonic() - progress < 5:
                time.sleep(0.05)
                if holder.accepted() > seen:
                    seen, progress = holder.accepted(), time.monotonic()
            if seen < n:
                fds = tree_fds(inst.pid)
                raise BenchError(
                    f"idle: backend saw {seen} of {n} connections (relay holds {fds} fds,"
                    f" {(fds - fds_before) / max(seen, 1):.1f} per connection;"
                    f" RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
                )
            time.sleep(0.5)  # let lazily allocated per-connection state settle
            mem = tree_memory(inst.pid)
            fds = tree_fds(inst.pid)
        finally:
            for s in socks:
                s.close()
            holder.drop_held()
        # processes beyond 2 (socat's forks): PSS is the honest sum
        use_pss = mem.processes > 2
        after_kb = mem.pss_kb if use_pss else mem.rss_kb
        before_kb = before.pss_kb if use_pss else before.rss_kb
        return {
            "rss_mb": mem.rss_kb / 1024,
            "pss_mb": mem.pss_kb / 1024,
            "processes": float(mem.processes),
            "rss_mb_before": before.rss_kb / 1024,
            "fds_per_conn": (fds - fds_before) / n,
            "mem_mb": after_kb / 1024,
            "kb_per_conn": (after_kb - before_kb) / n,
        }

    return measure


def _tput_tls(inst: Instance, ctx: Context) -> Metrics:
    """One TLS connection to the relay (RELAY_NAME, verified against the CA) reading the
    backend's stream of zeros for ``duration`` s (STREAM_BYTES at most): Gbit/s and the
    relay's CPU s per GB, user and system apart. The clock and the CPU meter start once
    the handshake is done and the first bytes arrived."""
    assert ctx.backends.ca_pem is not None
    tctx = ssl.create_default_context(cafile=ctx.backends.ca_pem)
    buf = bytearray(1 << 20)
    cpu = CpuMeter(inst.pid)
    raw = socket.create_connection((LOOPBACK, inst.port), timeout=10)
    with tctx.wrap_socket(raw, server_hostname=RELAY_NAME) as s:
        first = s.recv_into(buf)
        if not first:
            raise BenchError("tput over TLS: the relay closed before any byte")
        total = 0
        cpu.start()
        t0 = time.monotonic()
        end = t0 + ctx.duration
        now = t0
        while now < end and total < STREAM_BYTES:  # each pass gets >= 1 byte or ends
            got = s.recv_into(buf)
            if not got:
                break
            total += got
            now = time.monotonic()
        elapsed = time.monotonic() - t0
        used = cpu.stop()
    if total == 0 or elapsed <= 0:
        raise BenchError("tput over TLS: no bytes after the first read")
    gb = total / 1e9
    m = {"gbit_s": total * 8 / elapsed / 1e9, "gb": gb}
    if used is not None:
        m["cpu_s_per_gb"] = used / gb
        m["cpu_s_per_gb_user"] = cpu.user / gb
        m["cpu_s_per_gb_sys"] = cpu.system / gb
        if cpu.system_share is not None:
            m["cpu_kernel_share"] = cpu.system_share
    return m


def _handshakes(inst: Instance, ports: Mapping[str, int], ctx: Context) -> Metrics:
    """Full TLS handshakes/s from 4 client processes (names -> ports), with the relay's
    CPU per handshake."""
    cpu = CpuMeter(inst.pid)
    cpu.start()
    done, errors, elapsed = tlsload.run(ports, ctx.duration, 4)
    used = cpu.stop()
    if not done:
        raise BenchError(f"tls: no handshake completed ({errors} errors)")
    m = {"hs_s": done / elapsed, "errors": float(errors)}
    if used is not None:
        m.update(cpu.per_unit("cpu_us_per_hs", done))
    return m


def _tls(inst: Instance, ctx: Context) -> Metrics:
    """SNI passthrough: the names alternate, each routed to its own backend."""
    b = ctx.backends
    ports = dict(b.https_ports) if inst.proc is None else dict.fromkeys(b.https_ports, inst.port)
    return _handshakes(inst, ports, ctx)


def _tls_relay(inst: Instance, ctx: Context) -> Metrics:
    """Full handshakes/s with the relay itself (terminate / reoriginate), SNI RELAY_NAME."""
    return _handshakes(inst, {RELAY_NAME: inst.port}, ctx)


RESUME_CONNS = 400  # client connections per resumption load


def _resumption(inst: Instance, ctx: Context) -> Metrics:
    """RESUME_CONNS sequential TLS connections to the relay as RELAY_NAME (verified, one
    request each, 60 s at most), the relay re-originating to the nginx block that allows
    resumption; the share of the upstream handshakes that resumed a session, counted
    from the lines that block logged meanwhile ($ssl_session_reused: "r" or ".")."""
    b = ctx.backends
    assert b.resume_log is not None
    tctx = ssl.create_default_context(cafile=b.ca_pem)  # never offers a session itself
    offset = os.path.getsize(b.resume_log) if os.path.exists(b.resume_log) else 0
    done = errors = 0
    deadline = time.monotonic() + 60
    while done + errors < RESUME_CONNS and time.monotonic() < deadline:
        try:
            tlsload.fetch(inst.port, RELAY_NAME, tctx, timeout=10)
            done += 1
        except OSError:
            errors += 1
    lines: list[list[str]] = []
    wait = time.monotonic() + 5  # nginx writes each line as its request ends
    while time.monotonic() < wait:
        with open(b.resume_log) as f:
            f.seek(offset)
            lines = [line.split() for line in f if line.strip()]
        if len(lines) >= done:
            break
        time.sleep(0.05)
    if not lines:
        raise BenchError(f"resumption: no upstream request logged ({done} done, {errors} errors)")
    if any(line[1:2] != [REORIG_NAME] for line in lines):
        raise BenchError(f"resumption: a logged upstream handshake without SNI {REORIG_NAME}")
    resumed = sum(line[0] == "r" for line in lines)
    return {
        "resumed_share": resumed / len(lines),
        "resumed": float(resumed),
        "upstream_hs": float(len(lines)),
        "conns": float(done),
        "errors": float(errors),
    }


def _wrk_tls(inst: Instance, ctx: Context) -> Metrics:
    return _wrk(inst, ctx, "https")


def _grab(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _http(b: Backends) -> int | None:
    return b.http_port


def _https(b: Backends) -> Mapping[str, int] | None:
    return dict(b.https_ports) or None


def _term(b: Backends) -> int | None:
    """Plain HTTP backend behind a terminating relay (needs the relay certificate)."""
    return b.http_port if b.relay_tls is not None else None


def _reorig(b: Backends) -> Mapping[str, int] | None:
    """The HTTPS backend of REORIG_NAME, the name the relay sends and verifies."""
    if b.relay_tls is None or REORIG_NAME not in b.https_ports:
        return None
    return {REORIG_NAME: b.https_ports[REORIG_NAME]}


def _reorig_resume(b: Backends) -> Mapping[str, int] | None:
    """The nginx HTTPS block of REORIG_NAME that allows resumption."""
    if b.relay_tls is None or b.resume_port is None:
        return None
    return {REORIG_NAME: b.resume_port}


def _term_to(holder_of: Callable[[Backends], Acceptor | None]) -> Callable[[Backends], int | None]:
    """A Python plain-TCP backend (stream, idle) behind a terminating relay."""

    def target(b: Backends) -> int | None:
        h = holder_of(b)
        return h.port if b.relay_tls is not None and h is not None else None

    return target


def _reorig_to(
    holder_of: Callable[[Backends], Acceptor | None],
) -> Callable[[Backends], Mapping[str, int] | None]:
    """A Python TLS backend (stream_tls, idle_tls) as REORIG_NAME behind a re-originating one."""

    def target(b: Backends) -> Mapping[str, int] | None:
        h = holder_of(b)
        return {REORIG_NAME: h.port} if b.relay_tls is not None and h is not None else None

    return target


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "integrity", "byte-exact 16 MiB + half-close", "forward", "check",
        lambda b: b.integrity.port if b.integrity else None, _check_integrity,
    ),
    Scenario(
        "integrity_rev", "backend half-closes first, 16 MiB each way", "forward", "check",
        lambda b: b.integrity.port if b.integrity else None, _check_reverse,
    ),
    Scenario(
        "sni_check", "SNI routing reaches each backend", "sni", "check", _https, _check_sni,
    ),
    Scenario(
        "tunnel_check", "byte-exact 16 MiB + half-close through A and B", TUNNEL, "check",
        lambda b: b.integrity.port if b.integrity else None, _check_integrity,
    ),
    Scenario(
        "tunnel_check_rev", "backend half-closes first, through A and B", TUNNEL, "check",
        lambda b: b.integrity.port if b.integrity else None, _check_reverse,
    ),
    Scenario(
        "tls_term_check", "TLS ended at the relay, plain HTTP backend answers", "terminate",
        "check", _term, _check_tls_relay(lambda: ["ok"]),
    ),
    Scenario(
        "tls_reorig_check", "TLS ended and re-originated, backend sees its own name as SNI",
        "reoriginate", "check", _reorig, _check_tls_relay(lambda: [REORIG_NAME, REORIG_NAME]),
    ),
    Scenario(
        "udp_check", "UDP datagrams of 1,200 and 65,000 bytes echoed back whole", UDP, "check",
        lambda b: b.udp_echo.port if b.udp_echo else None, _check_udp,
    ),
    Scenario(
        "tput1", "1 stream", "forward", "load", lambda b: b.iperf_port, _iperf(1),
        ("iperf3",), metrics=("gbit_s", "cpu_s_per_gb"),
    ),
    Scenario(
        "tput8", "8 streams", "forward", "load", lambda b: b.iperf_port, _iperf(8),
        ("iperf3",), metrics=("gbit_s", "cpu_s_per_gb"),
    ),
    Scenario(
        "connrate", "new conn/s, small request each", "forward", "load", _http, _ab,
        ("ab",), metrics=("conn_s", "p50_ms", "p99_ms", "cpu_us_per_conn"),
    ),
    Scenario(
        "reqrate", "req/s on open connections", "forward", "load", _http, _wrk,
        ("wrk",), metrics=("req_s", "cpu_us_per_req"),
    ),
    Scenario(
        "idle1000", "memory at 1,000 idle conns", "forward", "load",
        lambda b: b.idle.port if b.idle else None, _idle(1000),
        needs_relay_process=True, metrics=("mem_mb", "rss_mb", "pss_mb"),
    ),
    Scenario(
        "idle5000", "memory at 5,000 idle conns", "forward", "load",
        lambda b: b.idle.port if b.idle else None, _idle(5000),
        needs_relay_process=True, metrics=("mem_mb", "rss_mb", "pss_mb"),
    ),
    Scenario(
        "tls", "TLS handshakes/s, SNI passthrough", "sni", "load", _https, _tls,
        metrics=("hs_s", "cpu_us_per_hs"),
    ),
    Scenario(
        "tls_term", "TLS handshakes/s, terminated at the relay", "terminate", "load",
        _term, _tls_relay, needs_relay_process=True, metrics=("hs_s", "cpu_us_per_hs"),
    ),
    Scenario(
        "tls_reorig", "TLS handshakes/s, terminated and re-originated", "reoriginate", "load",
        _reorig, _tls_relay, needs_relay_process=True, metrics=("hs_s", "cpu_us_per_hs"),
    ),
    Scenario(
        "tls_reorig_resume", "upstream TLS handshakes resumed, re-originated", "reoriginate",
        "load", _reorig_resume, _resumption, needs_relay_process=True,
        metrics=("resumed_share",),
    ),
    Scenario(
        "tls_term_req", "req/s on open TLS conns, terminated", "terminate", "load",
        _term, _wrk_tls, ("wrk",), needs_relay_process=True,
        metrics=("req_s", "cpu_us_per_req"),
    ),
    Scenario(
        "tls_reorig_req", "req/s on open TLS conns, re-originated", "reoriginate", "load",
        _reorig, _wrk_tls, ("wrk",), needs_relay_process=True,
        metrics=("req_s", "cpu_us_per_req"),
    ),
    Scenario(
        "tls_term_tput1", "1 TLS stream, terminated (backend sends zeros)", "terminate",
        "load", _term_to(lambda b: b.stream), _tput_tls, needs_relay_process=True,
        metrics=("gbit_s", "cpu_s_per_gb"),
    ),
    Scenario(
        "tls_reorig_tput1", "1 TLS stream, re-originated (TLS backend sends zeros)",
        "reoriginate", "load", _reorig_to(lambda b: b.stream_tls), _tput_tls,
        needs_relay_process=True, metrics=("gbit_s", "cpu_s_per_gb"),
    ),
    Scenario(
        "tls_term_idle1000", "memory at 1,000 idle TLS conns, terminated", "terminate",
        "load", _term_to(lambda b: b.idle), _idle(1000, lambda b: b.idle, tls=True),
        needs_relay_process=True, metrics=("mem_mb", "kb_per_conn"),
    ),
    Scenario(
        "tls_reorig_idle1000", "memory at 1,000 idle TLS conns, re-originated",
        "reoriginate", "load", _reorig_to(lambda b: b.idle_tls),
        _idle(1000, lambda b: b.idle_tls, tls=True), needs_relay_process=True,
        metrics=("mem_mb", "kb_per_conn"),
    ),
    # two snirelays chained (relays chain-tcp, chain-ws): the loads above, through A and B
    Scenario(
        "tunnel_tput1", "1 stream through two snirelays", TUNNEL, "load",
        lambda b: b.iperf_port, _iperf(1), ("iperf3",), needs_relay_process=True,
        metrics=("gbit_s", "cpu_s_per_gb"),
    ),
    Scenario(
        "tunnel_connrate", "new conn/s through two snirelays", TUNNEL, "load", _http, _ab,
        ("ab",), needs_relay_process=True,
        metrics=("conn_s", "p50_ms", "p99_ms", "cpu_us_per_conn"),
    ),
    Scenario(
        "tunnel_idle1000", "memory of A+B at 1,000 idle conns", TUNNEL, "load",
        lambda b: b.idle.port if b.idle else None, _idle(1000), needs_relay_process=True,
        metrics=("mem_mb", "kb_per_conn"),
    ),
    # UDP relaying: datagram rate through iperf3's server, round trips through the echo
    Scenario(
        "udp_pps", "1,200-byte datagrams/s, one flow, iperf3 -u -b 0", UDP, "load",
        lambda b: b.iperf_port, _udp_pps, ("iperf3",),
        metrics=("dgram_s", "mbit_s", "cpu_us_per_kdgram", "loss_pct"),
    ),
    Scenario(
        "udp_echo_rtt", "UDP echo round trips, 1,200 bytes, one at a time", UDP, "load",
        lambda b: b.udp_echo.port if b.udp_echo else None, _udp_rtt,
        metrics=("rt_s", "rtt_p50_us", "rtt_p99_us", "cpu_us_per_kdgram"),
    ),
)  # fmt: skip
