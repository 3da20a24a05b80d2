"""What the admin API shows: Prometheus metrics, live connections, recent handshakes,
each backend's state. One observer of the connection events (observe.events), added
to the context only when `[api]` is configured: a relay without the API does none of
this work.

How it works
------------
- Counters and histograms are `prometheus_client` objects in a registry of their own
  (not the library's global one), updated as events arrive: sniff outcomes, connect
  failures per backend, handshake failures per side and reason, connect and handshake
  times. Label values come from the config (listen addresses, route places, remotes as
  written) or from fixed sets (sniff outcomes, OpenSSL's reason names), never from
  what a client sent, so the number of series is bounded by the config.
- Connections and bytes per endpoint and route: what closed connections moved is added
  up at close; a scrape adds what the live ones moved so far (`Stats.collect`, a
  custom collector). A connection counts once it is routed (its route no longer
  changes), so every counter only grows.
- Recent handshakes: a bounded deque (`handshakes`, newest last), one entry per
  TLS client the relay saw: when the relay terminates, at the end of the client's
  handshake (or of the backend's, when that failed first); in passthrough, when the
  ClientHello was routed. Each has the SNI as received next to the SNI sent upstream.
- Backends: per upstream remote, the outcome of the last connect and the failures of
  the last `RECENT` seconds; "up" unless the last connect failed or the balancer left
  the remote out.

Everything runs on the event loop, in the observer calls and in the API's requests:
no locks.
"""

from __future__ import annotations

import ssl
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from snirelay.config.describe import mode_of
from snirelay.net.phases import fmt_addr

if TYPE_CHECKING:
    from snirelay.net.conn import Connection
    from snirelay.net.runtime import Context, EndpointRT, UpstreamRT

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series next to every counter: noise on a scrape

RECENT = 300.0  # seconds of connect failures kept per backend
MAX_FAILS_KEPT = 64  # per backend
SNIFF_OUTCOMES = ("sni", "no_sni", "ip_sni", "not_tls", "http", "timeout", "parse_error")
_PAST_DECIDE = ("accept", "sniff")  # phases in which a connection is not routed yet


def sniff_outcome(conn: Connection) -> str:
    """The sniff outcome of a connection whose sniff phase ended (one of SNIFF_OUTCOMES)."""
    kind = conn.kind
    seen = conn.seen
    if kind in ("tls", "sslv2"):
        if seen is None or seen.name is None:
            return "no_sni"
        return "ip_sni" if seen.name_is_ip else "sni"
    if kind == "http":
        return "http"
    if kind == "timeout":
        return "timeout"
    if kind == "not-tls":
        return "not_tls"
    return "parse_error"  # malformed, too large


def _reason_label(error: str) -> str:
    """A handshake failure as a bounded label, without the side (a label of its own):
    TLS reasons are OpenSSL's names (or the relay's fixed words); a WebSocket refusal
    quotes what the client asked for, so only its kind is kept."""
    head, _, rest = error.partition(": ")
    if head in ("tls-client", "tls-backend") and rest:
        return rest
    return head.split(":", 1)[0]


class _Backend:
    """What is known of one remote of one upstream."""

    __slots__ = ("last_ok", "fails", "last_error")

    def __init__(self) -> None:
        self.last_ok: bool | None = None  # None: never tried
        self.fails: deque[float] = deque(maxlen=MAX_FAILS_KEPT)  # wall-clock times
        self.last_error = ""


class Stats:
    """The admin API's observer (see the module docstring)."""

    def __init__(self, ctx: Context, endpoints: list[EndpointRT], handshakes: int = 1000) -> None:
        self.ctx = ctx
        self.endpoints = endpoints
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.sniffs = Counter(
            "snirelay_sniff",
            "Sniff outcomes of connections on endpoints that read the first bytes (routes,"
            " or TLS termination)",
            ["endpoint", "outcome"],
            registry=reg,
        )
        self.connect_failures = Counter(
            "snirelay_connect_failures",
            "Connect attempts to a remote that failed (refused, timed out, unresolved)",
            ["endpoint", "route", "backend"],
            registry=reg,
        )
        self.handshake_failures = Counter(
            "snirelay_handshake_failures",
            "Handshakes that failed, per side (client, backend), kind (tls, ws) and reason",
            ["side", "kind", "reason"],
            registry=reg,
        )
        self.connect_seconds = Histogram(
            "snirelay_connect_seconds",
            "Time to connect to a remote (name resolution included), successful tries",
            ["endpoint"],
            registry=reg,
        )
        self.handshake_seconds = Histogram(
            "snirelay_handshake_seconds",
            "Time a completed handshake took, per side and kind",
            ["side", "kind"],
            registry=reg,
        )
        reg.register(self)  # collect(): connections, bytes, active, backend state
        # what closed connections moved, per (endpoint, route)
        self.moved: dict[tuple[str, str], list[int]] = {}  # [connections, up, down]
        # (upstream place, remote as written): a remote replaced by a reload starts afresh
        self.backends: dict[tuple[str, str], _Backend] = {}
        self.handshakes: deque[dict[str, Any]] = deque(maxlen=max(1, handshakes))
        self.noted: dict[int, dict[str, Any]] = {}  # live connection id -> its entry there

    # ---- the connection events -------------------------------------------------------
    def sniffed(self, conn: Connection) -> None:
        self.sniffs.labels(str(conn.ep.cfg.listen), sniff_outcome(conn)).inc()

    def routed(self, conn: Connection) -> None:
        up = conn.upstream
        if up.server_tls is None and conn.kind in ("tls", "sslv2"):
            # passthrough: the relay sees the hello, the backend gets it as it is
            outcome = "passthrough" if up.cfg.remotes else "no-route"
            self._handshake(conn, outcome, passthrough=True)

    def remote_tried(self, conn: Connection, index: int, error: str | None, took: float) -> None:
        up = conn.upstream
        key = (up.where, str(up.cfg.remotes[index]))
        b = self.backends.get(key)
        if b is None:
            b = self.backends[key] = _Backend()
        ep = str(conn.ep.cfg.listen)
        if error is None:
            b.last_ok = True
            self.connect_seconds.labels(ep).observe(took)
            return
        b.last_ok = False
        b.last_error = error
        b.fails.append(time.time())
        self.connect_failures.labels(ep, conn.route, str(up.cfg.remotes[index])).inc()

    def handshaken(self, conn: Connection, which: str, error: str | None, took: float) -> None:
        side = conn.client if which == "client" else conn.backend
        kind = side.kind if side is not None else "tls"
        if error is None:
            self.handshake_seconds.labels(which, kind).observe(took)
        else:
            self.handshake_failures.labels(which, kind, _reason_label(error)).inc()
        if which == "client" or (error is not None and conn.upstream.server_tls is not None):
            self._handshake(conn, error or "ok")

    def closed(self, conn: Connection, record: dict[str, Any]) -> None:
        entry = self.noted.pop(conn.id, None)
        if entry is not None:
            if record["phase"] == "connect":  # passed through, but no backend took it
                entry["outcome"] = record["close"]
        elif conn.upstream.server_tls is not None and conn.kind in ("tls", "sslv2"):
            # terminating, and it ended before any handshake ended (the connect failed)
            self._handshake(conn, record["close"])
            self.noted.pop(conn.id, None)
        key = (str(conn.ep.cfg.listen), conn.route)
        got = self.moved.get(key)
        if got is None:
            got = self.moved[key] = [0, 0, 0]
        got[0] += 1
        got[1] += record["bytes_up"]
        got[2] += record["bytes_down"]

    # ---- recent handshakes -----------------------------------------------------------
    def _handshake(self, conn: Connection, outcome: str, passthrough: bool = False) -> None:
        seen = conn.seen
        hello = seen.hello if seen is not None else None
        sni = seen.name if seen is not None else None
        sent: str | None = sni if passthrough else None
        verified: bool | None = None
        b = conn.backend.tls if conn.backend is not None else None
        if b is not None:  # re-originated: what the relay sent, and whether it verified
            sent = b.obj.server_hostname
            checked = b.obj.context.verify_mode == ssl.CERT_REQUIRED  # not with insecure
            if b.info[0] is not None and checked:
                verified = True
            elif "certificate verify failed" in outcome:
                verified = False  # (None: insecure, nothing was checked)
        entry: dict[str, Any] = {
            "time": round(time.time(), 3),
            "client": _addr(conn.caddr),
            "sni": sni,
            "alpn": list(hello.alpn) if hello is not None and hello.alpn else [],
            "endpoint": str(conn.ep.cfg.listen),
            "route": conn.route,
            "mode": mode_of(conn.upstream.cfg, bool(conn.ep.cfg.routes))[0],
            "upstream_sni": sent,
            "reoriginated": conn.upstream.client_tls is not None,
            "verified": verified,
            "outcome": outcome,
        }
        self.handshakes.append(entry)
        self.noted[conn.id] = entry

    # ---- snapshots for the API -------------------------------------------------------
    def connections(self) -> list[dict[str, Any]]:
        now = self.ctx.loop.time()
        out = []
        for conn in sorted(self.ctx.conns, key=lambda c: c.id):
            up, down = conn.up, conn.down
            seen = conn.seen
            out.append(
                {
                    "id": conn.id,
                    "client": _addr(conn.caddr),
                    "endpoint": str(conn.ep.cfg.listen),
                    "sni": seen.name if seen is not None else None,
                    "route": conn.route,
                    "backend": _addr(conn.baddr),
                    "bytes_up": (up.nbytes if up else 0) + conn.sent,
                    "bytes_down": down.nbytes if down else 0,
                    "age": round(now - conn.t0, 3),
                    "phase": conn.phase.name,
                }
            )
        return out

    def backend_state(self, up: UpstreamRT) -> list[dict[str, Any]]:
        now, wall = self.ctx.loop.time(), time.time()
        out = []
        for i, remote in enumerate(up.cfg.remotes):
            b = self.backends.get((up.where, str(remote)))
            fails = [t for t in b.fails if wall - t <= RECENT] if b is not None else []
            down = (b is not None and b.last_ok is False) or (
                len(up.cfg.remotes) > 1 and up.balancer.is_down(i, now)
            )
            out.append(
                {
                    "remote": str(remote),
                    "up": not down,
                    "tried": b is not None and b.last_ok is not None,
                    "recent_failures": len(fails),
                    "last_error": b.last_error if b is not None and b.last_error else None,
                }
            )
        return out

    def endpoints_view(self) -> list[dict[str, Any]]:
        """Each endpoint with its routes in order (the default last), their mode and
        backends, and the live connections per route."""
        live: dict[tuple[str, str], int] = {}
        for conn in self.ctx.conns:
            k = (str(conn.ep.cfg.listen), conn.route)
            live[k] = live.get(k, 0) + 1
        out = []
        for ert in self.endpoints:
            ep = ert.cfg
            listen = str(ep.listen)
            routed = bool(ep.routes)
            routes = []
            for route in ep.routes:
                urt = ert.routes[route.place]
                names = list(route.server_names) or [f'when = "{route.when}"']
                routes.append(self._route_view(listen, route.place, names, urt, routed, live))
            routes.append(self._route_view(listen, "default", [], ert.default, routed, live))
            out.append({"endpoint": listen, "place": ep.place, "routes": routes})
        return out

    def _route_view(
        self,
        listen: str,
        place: str,
        names: list[str],
        urt: UpstreamRT,
        routed: bool,
        live: dict[tuple[str, str], int],
    ) -> dict[str, Any]:
        key, words = mode_of(urt.cfg, routed)
        return {
            "route": place,
            "names": names,
            "mode": key,
            "description": words,
            "backends": self.backend_state(urt),
            "live": live.get((listen, place), 0),
        }

    def metrics(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        out: bytes = generate_latest(self.registry)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the API shows, as plain values (what a worker sends over its
        control channel): the metrics as exposition text, the live connections, the
        recent handshakes (newest first), the endpoints' view, the start time."""
        return {
            "metrics": self.metrics().decode(),
            "connections": self.connections(),
            "handshakes": list(self.handshakes)[::-1],
            "endpoints": self.endpoints_view(),
            "started": self.started,
        }

    # ---- the custom collector (prometheus_client calls it at each scrape) ------------
    def describe(self) -> list[Metric]:
        return []  # collected fresh each time; no fixed descriptions to register

    def collect(self) -> Iterator[Metric]:
        conns = CounterMetricFamily(
            "snirelay_connections",
            "Connections routed (or closed before routing), per endpoint and route",
            labels=["endpoint", "route"],
        )
        nbytes = CounterMetricFamily(
            "snirelay_bytes",
            "Bytes relayed, per endpoint, route and direction (up: client to backend)",
            labels=["endpoint", "route", "direction"],
        )
        active = GaugeMetricFamily(
            "snirelay_connections_active",
            "Connections open now, per endpoint and route",
            labels=["endpoint", "route"],
        )
        backend_up = GaugeMetricFamily(
            "snirelay_backend_up",
            "1 when the remote's last connect worked (or it was not tried) and it is"
            " not left out by the balancer, else 0",
            labels=["endpoint", "route", "backend"],
        )
        totals = {k: list(v) for k, v in self.moved.items()}
        open_now: dict[tuple[str, str], int] = {}
        for conn in self.ctx.conns:
            key = (str(conn.ep.cfg.listen), conn.route)
            open_now[key] = open_now.get(key, 0) + 1
            if conn.phase.name in _PAST_DECIDE:
                continue  # not routed yet: counted once its route is known
            got = totals.get(key)
            if got is None:
                got = totals[key] = [0, 0, 0]
            up, down = conn.up, conn.down
            got[0] += 1
            got[1] += (up.nbytes if up else 0) + conn.sent
            got[2] += down.nbytes if down else 0
        for (ep, route), (n, b_up, b_down) in sorted(totals.items()):
            conns.add_metric([ep, route], n)
            nbytes.add_metric([ep, route, "up"], b_up)
            nbytes.add_metric([ep, route, "down"], b_down)
        for ert in self.endpoints:
            listen = str(ert.cfg.listen)
            for urt in (*ert.routes.values(), ert.default):
                active.add_metric([listen, urt.place], open_now.get((listen, urt.place), 0))
                for b in self.backend_state(urt):
                    backend_up.add_metric([listen, urt.place, b["remote"]], 1 if b["up"] else 0)
        yield conns
        yield nbytes
        yield active
        yield backend_up
        yield from self._udp()

    def _udp(self) -> Iterator[Metric]:
        if not self.ctx.udp:
            return
        assocs = GaugeMetricFamily(
            "snirelay_udp_associations",
            "UDP associations (client addresses) open now, per endpoint",
            labels=["endpoint"],
        )
        refused = CounterMetricFamily(
            "snirelay_udp_refused",
            "Datagrams of new UDP clients refused past udp_max_sessions, per endpoint",
            labels=["endpoint"],
        )
        for relay in self.ctx.udp:
            listen = str(relay.ep.cfg.listen)
            assocs.add_metric([listen], len(relay.assocs))
            refused.add_metric([listen], relay.refused)
        yield assocs
        yield refused


def _addr(sa: Any) -> str | None:
    return fmt_addr(sa) if sa is not None else None


# ---- several workers: one relay's figures ------------------------------------------------


def merge_snapshots(parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The snapshots of every worker (pid, snapshot) as one relay's: every worker's
    series with a `worker` label (its slot: bounded, and a restarted worker's counters
    start again as a new life of the same series, which Prometheus reads as a reset;
    summed across workers, a worker's death would make the sum go down), connections
    listed with their worker's pid, handshakes interleaved by time, the endpoints' live
    counts and backend failures added up (a backend is up only if every worker sees it
    up)."""
    if not parts:
        return {"metrics": "", "connections": [], "handshakes": [], "endpoints": [],
                "started": time.time()}  # fmt: skip
    conns = [dict(c, worker=pid) for pid, snap in parts for c in snap["connections"]]
    shakes = [dict(h, worker=pid) for pid, snap in parts for h in snap["handshakes"]]
    shakes.sort(key=lambda h: -h["time"])
    return {
        "metrics": _merge_metrics(
            [(str(snap.get("slot", pid)), snap["metrics"]) for pid, snap in parts]
        ),  # fmt: skip
        "connections": sorted(conns, key=lambda c: (c["worker"], c["id"])),
        "handshakes": shakes,
        "endpoints": _merge_endpoints([snap["endpoints"] for _, snap in parts]),
        "started": min(snap["started"] for _, snap in parts),
    }


def _merge_metrics(texts: list[tuple[str, str]]) -> str:
    """(worker, exposition text) of each worker -> one exposition, each sample labelled
    with its worker (made by prometheus_client's own parser and writer)."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    for worker, text in texts:
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for smp in fam.samples:
                merged.add_sample(smp.name, {**smp.labels, "worker": worker}, smp.value)
    registry = CollectorRegistry(auto_describe=False)

    class Merged:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    registry.register(Merged())
    return bytes(generate_latest(registry)).decode()


def _merge_endpoints(views: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The first worker's view, with every worker's live counts and backend state
    (they serve the same config)."""
    import copy

    merged = copy.deepcopy(views[0])
    for other in views[1:]:
        for ep, oep in zip(merged, other, strict=False):
            for route, oroute in zip(ep["routes"], oep["routes"], strict=False):
                route["live"] += oroute["live"]
                for b, ob in zip(route["backends"], oroute["backends"], strict=False):
                    b["up"] = b["up"] and ob["up"]
                    b["tried"] = b["tried"] or ob["tried"]
                    b["recent_failures"] += ob["recent_failures"]
                    b["last_error"] = b["last_error"] or ob["last_error"]
    return merged
