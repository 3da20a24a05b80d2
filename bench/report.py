"""Render one benchmark result (the JSON written by run.py) as BENCHMARKS.md.

How it works: pure formatting. Each table cell is the median over the rounds, with
"(x direct / x HAProxy)" ratios of medians from the same run; a second table gives the
spread (min-max over rounds). Relay CPU per unit of work is shown as a total and as
user and system time apart. When the run had a baseline build (``run.py --baseline
REF``, relay ``snirelay@REF``), a before/after table puts it beside this tree's
snirelay with the ratio of medians. The targets of issue 7 (and the two of issue 4 it
does not restate) are checked on snirelay's ratios to HAProxy or to the baseline. The
UDP section has its own references: ratios to socat and to nginx stream (HAProxy 2.6
has no UDP), and its own target line (datagrams/s against socat and nginx). The
hand-written analysis (profile findings) is read from bench/analysis.md and included
verbatim, so regenerating never loses it. A result written before a column existed
renders that column as "n/a".
"""

from __future__ import annotations

import os
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))

# (scenario, metric, column title, format, direction: +1 higher is better, -1 lower)
FORWARD_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tput1", "gbit_s", "1 stream Gbit/s", "{:.1f}", 1),
    ("tput8", "gbit_s", "8 streams Gbit/s", "{:.1f}", 1),
    ("connrate", "conn_s", "new conn/s, small req each", "{:,.0f}", 1),
    ("connrate", "p50_ms", "p50 ms", "{:.2f}", -1),
    ("connrate", "p99_ms", "p99 ms", "{:.2f}", -1),
    ("reqrate", "req_s", "req/s on open conns", "{:,.0f}", 1),
    ("connrate", "cpu_us_per_conn", "relay CPU µs / new conn", "{:.0f}", -1),
    ("tput1", "cpu_s_per_gb", "relay CPU s / GB (1 stream)", "{:.2f}", -1),
    ("connrate", "cpu_kernel_share", "kernel share of that CPU", "{:.0%}", -1),
    ("reqrate", "cpu_us_per_req", "relay CPU µs / req", "{:.1f}", -1),
    ("idle1000", "mem_mb", "MB at 1,000 idle", "{:.1f}", -1),
    ("idle5000", "mem_mb", "MB at 5,000 idle", "{:.1f}", -1),
    ("idle1000", "fds_per_conn", "fds / idle conn", "{:.1f}", -1),
)
SNI_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tls", "hs_s", "TLS handshakes/s", "{:,.0f}", 1),
    ("tls", "cpu_us_per_hs", "relay CPU µs / handshake", "{:.0f}", -1),
    ("tls", "cpu_us_per_hs_user", "of which user µs", "{:.0f}", -1),
    ("tls", "cpu_us_per_hs_sys", "of which system µs", "{:.0f}", -1),
)
# TLS ended at the relay (terminate) and also re-originated to a TLS backend (reoriginate)
TLSTERM_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tls_term", "hs_s", "terminate: handshakes/s", "{:,.0f}", 1),
    ("tls_term", "cpu_us_per_hs", "relay CPU µs / hs", "{:.0f}", -1),
    ("tls_term", "cpu_us_per_hs_user", "user µs", "{:.0f}", -1),
    ("tls_term", "cpu_us_per_hs_sys", "system µs", "{:.0f}", -1),
    ("tls_reorig", "hs_s", "re-originate: handshakes/s", "{:,.0f}", 1),
    ("tls_reorig", "cpu_us_per_hs", "relay CPU µs / hs", "{:.0f}", -1),
    ("tls_reorig", "cpu_us_per_hs_user", "user µs", "{:.0f}", -1),
    ("tls_reorig", "cpu_us_per_hs_sys", "system µs", "{:.0f}", -1),
)
TLSTERM_REQ_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tls_term_req", "req_s", "terminate: req/s on open TLS conns", "{:,.0f}", 1),
    ("tls_term_req", "cpu_us_per_req", "relay CPU µs / req", "{:.1f}", -1),
    ("tls_term_req", "cpu_us_per_req_user", "user µs", "{:.1f}", -1),
    ("tls_term_req", "cpu_us_per_req_sys", "system µs", "{:.1f}", -1),
    ("tls_reorig_req", "req_s", "re-originate: req/s", "{:,.0f}", 1),
    ("tls_reorig_req", "cpu_us_per_req", "relay CPU µs / req", "{:.1f}", -1),
    ("tls_reorig_req", "cpu_us_per_req_user", "user µs", "{:.1f}", -1),
    ("tls_reorig_req", "cpu_us_per_req_sys", "system µs", "{:.1f}", -1),
)
# one TLS stream downloading zeros through the relay, and memory at 1,000 idle TLS conns
TLSTERM_TPUT_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tls_term_tput1", "gbit_s", "terminate: 1 TLS stream Gbit/s", "{:.2f}", 1),
    ("tls_term_tput1", "cpu_s_per_gb", "relay CPU s / GB", "{:.2f}", -1),
    ("tls_term_tput1", "cpu_s_per_gb_user", "user s", "{:.2f}", -1),
    ("tls_term_tput1", "cpu_s_per_gb_sys", "system s", "{:.2f}", -1),
    ("tls_reorig_tput1", "gbit_s", "re-originate: Gbit/s", "{:.2f}", 1),
    ("tls_reorig_tput1", "cpu_s_per_gb", "relay CPU s / GB", "{:.2f}", -1),
    ("tls_reorig_tput1", "cpu_s_per_gb_user", "user s", "{:.2f}", -1),
    ("tls_reorig_tput1", "cpu_s_per_gb_sys", "system s", "{:.2f}", -1),
)
TLSTERM_MEM_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tls_term_idle1000", "mem_mb", "terminate: MB at 1,000 idle TLS", "{:.1f}", -1),
    ("tls_term_idle1000", "kb_per_conn", "KB / conn", "{:.1f}", -1),
    ("tls_term_idle1000", "fds_per_conn", "fds / conn", "{:.1f}", -1),
    ("tls_reorig_idle1000", "mem_mb", "re-originate: MB at 1,000 idle TLS", "{:.1f}", -1),
    ("tls_reorig_idle1000", "kb_per_conn", "KB / conn", "{:.1f}", -1),
    ("tls_reorig_idle1000", "fds_per_conn", "fds / conn", "{:.1f}", -1),
)
TLSTERM_TABLES = (TLSTERM_COLS, TLSTERM_REQ_COLS, TLSTERM_TPUT_COLS, TLSTERM_MEM_COLS)
TLS_MODES = ("terminate", "reoriginate")
RESUME = "tls_reorig_resume"  # a share per relay, shown plain (no ratios)
# two snirelays chained (relays chain-tcp, chain-ws; mode tunnel): figures for A+B together
TUNNEL = "tunnel"
CHAINS = ("chain-tcp", "chain-ws")  # plain TCP between A and B, WebSocket between
TUNNEL_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tunnel_tput1", "gbit_s", "1 stream Gbit/s", "{:.2f}", 1),
    ("tunnel_tput1", "cpu_s_per_gb", "A+B CPU s / GB", "{:.2f}", -1),
    ("tunnel_connrate", "conn_s", "new conn/s", "{:,.0f}", 1),
    ("tunnel_connrate", "p99_ms", "p99 ms", "{:.2f}", -1),
    ("tunnel_connrate", "cpu_us_per_conn", "A+B CPU µs / new conn", "{:.0f}", -1),
    ("tunnel_idle1000", "mem_mb", "A+B MB at 1,000 idle", "{:.1f}", -1),
    ("tunnel_idle1000", "kb_per_conn", "A+B KB / idle conn", "{:.2f}", -1),
    ("tunnel_idle1000", "fds_per_conn", "A+B fds / idle conn", "{:.1f}", -1),
)
WS_TPUT_TARGET = 0.7  # ws chain single-stream throughput over the plain chain's
# UDP relaying (mode udp): iperf3 -u -b 0 datagram rate, then round trips through the echo
UDP = "udp"
UDP_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("udp_pps", "dgram_s", "datagrams/s (1,200 B)", "{:,.0f}", 1),
    ("udp_pps", "mbit_s", "Mbit/s", "{:,.0f}", 1),
    ("udp_pps", "loss_pct", "loss %", "{:.1f}", -1),
    ("udp_pps", "relay_drop_pct", "dropped at the relay's socket, % of sent", "{:.1f}", -1),
    ("udp_pps", "backend_drop_pct", "at the backend's, % of sent", "{:.1f}", -1),
    ("udp_pps", "fwd_dgram_s", "forwarded by the relay /s", "{:,.0f}", 1),
    ("udp_pps", "cpu_us_per_kdgram", "relay CPU µs / 1,000 forwarded", "{:,.0f}", -1),
    ("udp_echo_rtt", "rt_s", "echo round trips/s", "{:,.0f}", 1),
    ("udp_echo_rtt", "rtt_p50_us", "echo p50 µs", "{:.0f}", -1),
    ("udp_echo_rtt", "rtt_p99_us", "echo p99 µs", "{:.0f}", -1),
    ("udp_echo_rtt", "cpu_us_per_kdgram", "echo: relay CPU µs / 1,000 datagrams", "{:,.0f}", -1),
)
UDP_CPU_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("udp_pps", "cpu_us_per_kdgram_user", "user µs / 1,000 forwarded", "{:,.0f}", -1),
    ("udp_pps", "cpu_us_per_kdgram_sys", "system µs / 1,000 forwarded", "{:,.0f}", -1),
    ("udp_pps", "cpu_kernel_share", "kernel share", "{:.0%}", -1),
    ("udp_echo_rtt", "cpu_us_per_kdgram_user", "echo: user µs / 1,000", "{:,.0f}", -1),
    ("udp_echo_rtt", "cpu_us_per_kdgram_sys", "echo: system µs / 1,000", "{:,.0f}", -1),
)
# (reference relay, its letter in the brackets, shown as "—" when it has no figure)
REFS: tuple[tuple[str, str, bool], ...] = (("direct", "d", False), ("haproxy", "h", True))
UDP_REFS: tuple[tuple[str, str, bool], ...] = (("socat", "s", True), ("nginx", "n", True))
UDP_TARGETS = (("socat", 1.0), ("nginx", 0.5))  # snirelay's datagrams/s over theirs, at least
NO_RATIO = frozenset({"loss_pct", "relay_drop_pct", "backend_drop_pct"})  # shares: no ratio
# relay CPU per unit of plain forwarding work, user and system apart
CPU_COLS: tuple[tuple[str, str, str, str, int], ...] = (
    ("connrate", "cpu_us_per_conn", "µs / new conn", "{:.0f}", -1),
    ("connrate", "cpu_us_per_conn_user", "user µs / new conn", "{:.0f}", -1),
    ("connrate", "cpu_us_per_conn_sys", "system µs / new conn", "{:.0f}", -1),
    ("reqrate", "cpu_us_per_req", "µs / req", "{:.1f}", -1),
    ("reqrate", "cpu_us_per_req_user", "user µs / req", "{:.1f}", -1),
    ("reqrate", "cpu_us_per_req_sys", "system µs / req", "{:.1f}", -1),
)
# before/after rows (baseline build vs this tree), same shape as the columns above
BEFORE_AFTER: tuple[tuple[str, str, str, str, int], ...] = (
    ("tput1", "gbit_s", "1 stream Gbit/s", "{:.1f}", 1),
    ("tput8", "gbit_s", "8 streams Gbit/s", "{:.1f}", 1),
    ("connrate", "conn_s", "new conn/s, small req each", "{:,.0f}", 1),
    ("connrate", "p99_ms", "new conn p99 ms", "{:.2f}", -1),
    ("connrate", "cpu_us_per_conn", "relay CPU µs / new conn", "{:.0f}", -1),
    ("connrate", "cpu_us_per_conn_user", "… user", "{:.0f}", -1),
    ("connrate", "cpu_us_per_conn_sys", "… system", "{:.0f}", -1),
    ("reqrate", "req_s", "req/s on open conns", "{:,.0f}", 1),
    ("reqrate", "cpu_us_per_req", "relay CPU µs / req", "{:.1f}", -1),
    ("idle5000", "mem_mb", "MB at 5,000 idle", "{:.1f}", -1),
    ("tls", "hs_s", "TLS handshakes/s (SNI passthrough)", "{:,.0f}", 1),
    ("tls", "cpu_us_per_hs", "relay CPU µs / handshake", "{:.0f}", -1),
    ("tls", "cpu_us_per_hs_user", "… user", "{:.0f}", -1),
    ("tls", "cpu_us_per_hs_sys", "… system", "{:.0f}", -1),
    ("udp_pps", "dgram_s", "UDP datagrams/s (1,200 B, iperf3 -u -b 0)", "{:,.0f}", 1),
    ("udp_pps", "cpu_us_per_kdgram", "relay CPU µs / 1,000 datagrams forwarded", "{:,.0f}", -1),
    ("udp_echo_rtt", "rtt_p50_us", "UDP echo p50 µs", "{:.0f}", -1),
    ("udp_echo_rtt", "cpu_us_per_kdgram", "relay CPU µs / 1,000 echoed datagrams", "{:,.0f}", -1),
)
BASELINE = "@baseline"  # stands for the run's baseline relay in TARGETS
# (scenario, metric, text, bound, direction, compared with: a relay name or BASELINE)
TARGETS: tuple[tuple[str, str, str, float, int, str], ...] = (
    ("tput1", "gbit_s", "single-stream throughput >= 1.0x HAProxy", 1.0, 1, "haproxy"),
    ("connrate", "conn_s", "new connections/s >= 0.8x HAProxy", 0.8, 1, "haproxy"),
    ("reqrate", "req_s", "request/response rate >= 0.8x HAProxy", 0.8, 1, "haproxy"),
    ("idle5000", "mem_mb", "memory at 5,000 idle connections <= 1.0x HAProxy", 1.0, -1, "haproxy"),
    (
        "tls",
        "cpu_us_per_hs",
        "relay CPU per SNI passthrough handshake <= 0.85x the baseline's (15% below)",
        0.85,
        -1,
        BASELINE,
    ),
    (
        "connrate",
        "p99_ms",
        "new-connection p99 latency <= 1.5x HAProxy (issue 4)",
        1.5,
        -1,
        "haproxy",
    ),
    ("tls", "hs_s", "SNI passthrough handshakes/s >= 0.8x HAProxy (issue 4)", 0.8, 1, "haproxy"),
)


def _median(res: dict[str, Any], scen: str, relay: str, metric: str) -> float | None:
    try:
        return float(res["results"][scen][relay]["summary"][metric]["median"])
    except KeyError:
        return None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def _cell(
    res: dict[str, Any],
    relay: str,
    col: tuple[str, str, str, str, int],
    refs: tuple[tuple[str, str, bool], ...] = REFS,
) -> str:
    scen, metric, _, fmt, _ = col
    v = _median(res, scen, relay, metric)
    if v is None:
        return _why_missing(res, scen, relay)
    text = fmt.format(v)
    if metric == "mem_mb":
        s = res["results"][scen][relay]["summary"]
        if s.get("processes", {}).get("median", 1) > 2:
            text += " PSS"
    parts = []
    for ref, letter, always in () if metric in NO_RATIO else refs:
        base = _median(res, scen, ref, metric)
        if relay != ref and (always or base is not None):
            parts.append(f"{_ratio(v, base)} {letter}")
    return f"{text} ({', '.join(parts)})" if parts else text


def _why_missing(res: dict[str, Any], scen: str, relay: str) -> str:
    info = res["relays"].get(relay, {})
    if info.get("skipped"):
        return "not installed"
    mode = res["scenarios"].get(scen, {}).get("mode", "")
    if mode in info.get("failed", {}):
        return "FAILED check"
    bucket = res["results"].get(scen, {}).get(relay)
    if bucket and bucket.get("errors"):
        return "error"
    return "n/a"


def _spread(res: dict[str, Any], relay: str, col: tuple[str, str, str, str, int]) -> str:
    scen, metric, _, fmt, _ = col
    try:
        s = res["results"][scen][relay]["summary"][metric]
    except KeyError:
        return "—"
    lo, hi, med = s["min"], s["max"], s["median"]
    pct = f" ±{(hi - lo) / 2 / med * 100:.0f}%" if med else ""
    return f"{fmt.format(lo)}–{fmt.format(hi)}{pct}"


def _table(
    res: dict[str, Any],
    cols: tuple[tuple[str, str, str, str, int], ...],
    spread: bool,
    refs: tuple[tuple[str, str, bool], ...] = REFS,
    also: tuple[str, ...] = (),
) -> list[str]:
    """One row per relay measured in ``cols`` (and per relay in ``also``, e.g. one that
    lacks the mode: its cells say n/a); medians with ratios to ``refs``, or the spread."""
    relays = [
        r
        for r in res["relays"]
        if r in also or any(r in res["results"].get(c[0], {}) for c in cols)
    ]
    if not relays:
        return ["(not measured in this run)"]
    modes = {res["scenarios"].get(c[0], {}).get("mode") for c in cols}
    chain = TUNNEL in modes  # the chain relays show only in the tunnel tables
    relays = [  # keep the run's order; a relay that failed a check or is missing shows why
        r
        for r, info in res["relays"].items()
        if r in relays
        or (
            (info.get("skipped") or modes & set(info.get("failed", {})))
            and (TUNNEL in info.get("modes", ())) == chain
        )
    ]
    head = "| relay | " + " | ".join(c[2] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in relays:
        label = res["relays"][r]["label"]
        cells = [_spread(res, r, c) if spread else _cell(res, r, c, refs) for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _check_cell(info: dict[str, Any], name: str, mode: str) -> str:
    if mode in info["failed"]:
        return f"**FAILED** ({info['failed'][mode]}) — not timed"
    modes = info.get("modes")
    if modes is None:  # a result from before run.py recorded modes and checks
        return "n/a (no SNI routing)" if name == "socat" and mode == "sni" else "pass"
    if mode not in modes:
        return {
            "forward": "n/a (no plain forwarding)",
            "sni": "n/a (no SNI routing)",
            "terminate": "n/a (no TLS termination)",
            "reoriginate": "n/a (no TLS re-origination)",
            TUNNEL: "n/a (not a chain)",
            UDP: "n/a (no UDP)",
        }[mode]
    checks = {
        "forward": ("integrity", "integrity_rev"),
        "sni": ("sni_check",),
        "terminate": ("tls_term_check",),
        "reoriginate": ("tls_reorig_check",),
        TUNNEL: ("tunnel_check", "tunnel_check_rev"),
        UDP: ("udp_check",),
    }[mode]
    done = [c for c in checks if c in info.get("checked", [])]
    if len(done) == len(checks):
        return "pass"
    return "not run (not in --only)" if not done else f"partly run: {', '.join(done)} passed"


def _us(res: dict[str, Any], relay: str, scen: str, metric: str) -> str:
    total = _median(res, scen, relay, metric)
    if total is None:
        return f"{res['relays'][relay]['label']}: {_why_missing(res, scen, relay)}"
    user = _median(res, scen, relay, f"{metric}_user")
    system = _median(res, scen, relay, f"{metric}_sys")
    split = "" if user is None or system is None else f" ({user:.0f} user + {system:.0f} system)"
    return f"{res['relays'][relay]['label']} {total:.0f} µs{split}"


def _sni_summary(res: dict[str, Any]) -> list[str]:
    """One line: snirelay's CPU per handshake beside HAProxy's and sniproxy's."""
    names = ["snirelay"]
    base = res.get("baseline", {}).get("relay")
    if base:
        names.append(base)
    names += ["haproxy", "sniproxy", "nginx"]
    names = [n for n in names if n in res["relays"]]
    if not any(_median(res, "tls", n, "cpu_us_per_hs") is not None for n in names):
        return []
    return [
        "Relay CPU per SNI passthrough handshake (medians): "
        + "; ".join(_us(res, n, "tls", "cpu_us_per_hs") for n in names)
        + ".",
        "",
    ]


def _before_after(res: dict[str, Any]) -> list[str]:
    base = res.get("baseline")
    if not base:
        return []
    old, new = base["relay"], "snirelay"
    out = [
        f"## Before / after: {old} against this tree's snirelay",
        "",
        f"The baseline is commit `{base['commit']}`: its `src/` taken with `git archive`, run"
        " with the same interpreter and venv, in every scenario of this run, interleaved with"
        " the others. Medians over the rounds; `after / before` is this tree's median over the"
        " baseline's (above 1 is better for rates, below 1 for latency, CPU and memory)."
        ' "outside spread" means the two builds\' min–max ranges over the rounds do not'
        " overlap.",
        "",
        f"| measure | {old} (before) | snirelay (after) | after / before | |",
        "|---|---|---|---|---|",
    ]
    rows = 0
    for scen, metric, title, fmt, direction in BEFORE_AFTER:
        a, b = _median(res, scen, old, metric), _median(res, scen, new, metric)
        if a is None and b is None:
            continue
        rows += 1
        ca = _why_missing(res, scen, old) if a is None else fmt.format(a)
        cb = _why_missing(res, scen, new) if b is None else fmt.format(b)
        verdict = ""
        if a is not None and b is not None and a:
            sa = res["results"][scen][old]["summary"][metric]
            sb = res["results"][scen][new]["summary"][metric]
            if min(sa["n"], sb["n"]) < 2:
                verdict = "1 round: no spread"
            elif sb["min"] > sa["max"] or sb["max"] < sa["min"]:
                better = (b > a) == (direction > 0)
                verdict = "better, outside spread" if better else "**worse**, outside spread"
            else:
                verdict = "within spread"
        out.append(f"| {title} | {ca} | {cb} | {_ratio(b, a)} | {verdict} |")
    if not rows:
        out.append("| (no scenario measured both) | | | | |")
    return [*out, ""]


def _targets(res: dict[str, Any]) -> list[str]:
    base = res.get("baseline", {}).get("relay")
    out = [
        "## snirelay against issue 7's targets (ratios of medians)",
        "",
        "| target | snirelay / reference | met |",
        "|---|---|---|",
    ]
    for scen, metric, text, bound, direction, against in TARGETS:
        ref = base if against == BASELINE else against
        if ref is None:
            out.append(f"| {text} | not measured (needs `--baseline REF`) | — |")
            continue
        a, b = _median(res, scen, "snirelay", metric), _median(res, scen, ref, metric)
        if a is None or b is None or b == 0:
            bucket = res["results"].get(scen, {}).get("snirelay", {})
            if bucket.get("errors"):
                out.append(f"| {text} | failed: {bucket['errors'][0]} | **no** |")
            else:
                out.append(f"| {text} | not measured | — |")
            continue
        r = a / b
        ok = r >= bound if direction > 0 else r <= bound
        vs = f" (against {ref})" if against == BASELINE else ""
        out.append(f"| {text} | {r:.2f}{vs} | {'yes' if ok else '**no**'} |")
    return out


def _resume_share(res: dict[str, Any], relay: str) -> tuple[str, str]:
    """(median round as "97.5% (390 of 400)", min–max share over the rounds)."""
    bucket = res["results"][RESUME][relay]
    good = sorted(
        (m for m in bucket["rounds"] if "error" not in m), key=lambda m: m["resumed_share"]
    )
    if not good:
        return _why_missing(res, RESUME, relay), "—"
    mid = good[(len(good) - 1) // 2]
    text = f"{mid['resumed_share']:.1%} ({mid['resumed']:.0f} of {mid['upstream_hs']:.0f})"
    return text, f"{good[0]['resumed_share']:.1%}–{good[-1]['resumed_share']:.1%}"


def _resume_section(res: dict[str, Any]) -> list[str]:
    per = res["results"].get(RESUME)
    if not per:
        return []
    out = [
        "Upstream resumption: each relay re-originates to a second nginx HTTPS block for"
        " `a.bench.test` that does allow resumption (TLS 1.3 tickets, a shared session cache"
        " for TLS 1.2), while 400 sequential client connections (one request each, tickets"
        " still off toward the client) go through it; the share is that of the relay's"
        " upstream handshakes that nginx logged as resumed (`$ssl_session_reused`), in the"
        " median round. The first one of a fresh relay is always full. A share, so no ratio"
        " to HAProxy.",
        "",
        "| relay | upstream handshakes resumed | min–max over rounds |",
        "|---|---|---|",
    ]
    for relay in per:
        text, spread = _resume_share(res, relay)
        out.append(f"| {res['relays'][relay]['label']} | {text} | {spread} |")
    return [*out, ""]


def _tls_term_section(res: dict[str, Any]) -> list[str]:
    """TLS terminated at the relay / re-originated: only the tables the run measured."""
    tables = [cols for cols in TLSTERM_TABLES if {c[0] for c in cols} & set(res["results"])]
    if not tables and RESUME not in res["results"]:
        return []
    out = [
        "## TLS termination and re-origination",
        "",
        "The relay holds the certificate (ECDSA P-256, one per run, for `relay.example.com`, from"
        " the run's CA) with session tickets and the session cache off, so every connection is a"
        " full handshake. terminate: plain HTTP to the nginx backend; re-originate: a second TLS"
        " connection to the nginx HTTPS backend of `a.bench.test` (SNI sent, certificate verified"
        " against the CA; the backend allows no resumption either). Handshakes: 4 Python processes,"
        " one request per connection; req/s: wrk `-t 1 -c 64 -d D` over https (keep-alive)."
        " 1 TLS stream: one Python client connection (verified, SNI `relay.example.com`) reading"
        " for D s (4 GiB at most) what a Python backend sends, zeros in 1 MiB writes (plain TCP"
        " behind terminate, TLS as `a.bench.test` behind re-originate); the client and the backend"
        " share the other cores, so CPU s / GB is the figure to compare. Idle TLS: 1,000"
        " connections that finish the handshake with the relay (and, re-originating, the relay's"
        " with a Python TLS backend) and then send nothing; the relay's memory once the backend"
        " holds all 1,000, KB / conn = (that - before the first) / 1,000, after one warm-up"
        " handshake. In brackets: ratio to HAProxy (`h`). direct, sniproxy and socat cannot do"
        " this (n/a).",
        "",
    ]
    for cols in tables:
        out += [*_table(res, cols, spread=False), ""]
    out += _resume_section(res)
    if tables:
        out += ["Spread:", ""]
    for cols in tables:
        out += [*_table(res, cols, spread=True), ""]
    return out


def _tunnel_section(res: dict[str, Any]) -> list[str]:
    """Two snirelays chained, plain TCP or WebSocket between them: rows and ws / plain."""
    if not {c[0] for c in TUNNEL_COLS} & set(res["scenarios"]):
        return []
    plain, ws = CHAINS
    out = [
        "## WebSocket tunnel (two snirelays)",
        "",
        "Two snirelays chained on loopback, one worker each: client -> A -> B -> backend. Plain"
        " chain: two plain TCP endpoints; ws chain: A has `remote_transport ="
        ' "ws;host=tunnel.bench.test;path=/tunnel"` and B the same as `listen_transport`, so the'
        " stream crosses from A to B as WebSocket binary frames. A and B run as one process"
        " tree and every CPU, memory and descriptor figure is A and B together. 1 stream:"
        " iperf3 `-t D` to the iperf3 backend; new conn/s: ab `-c 32 -t D` against the nginx"
        " HTTP backend, a new connection (and, for ws, a new WebSocket upgrade from A to B) per"
        " request; idle: 1,000 client connections that send nothing, A+B's RSS read once the"
        " idle backend holds all 1,000, KB / idle conn = (that - before) / 1,000. Medians over"
        " the rounds; the last row is the ws chain's median over the plain chain's (above 1 is"
        " better for rates, below 1 for latency, CPU and memory).",
        "",
        "| chain | checks (byte-exact, half-close each way) | "
        + " | ".join(c[2] for c in TUNNEL_COLS)
        + " |",
        "|" + "---|" * (len(TUNNEL_COLS) + 2),
    ]
    for name in (n for n in CHAINS if n in res["relays"]):
        info = res["relays"][name]
        if info.get("skipped"):
            check = f"skipped: {info['skipped']}"
        else:
            check = _check_cell(info, name, TUNNEL)
        cells = []
        for scen, metric, _, fmt, _ in TUNNEL_COLS:
            v = _median(res, scen, name, metric)
            cells.append(_why_missing(res, scen, name) if v is None else fmt.format(v))
        out.append(f"| {info['label']} | {check} | " + " | ".join(cells) + " |")
    ratios = [_ratio(_median(res, s, ws, m), _median(res, s, plain, m)) for s, m, *_ in TUNNEL_COLS]
    out += ["| **ws / plain** | | " + " | ".join(ratios) + " |", ""]
    a, b = _median(res, "tunnel_tput1", ws, "gbit_s"), _median(res, "tunnel_tput1", plain, "gbit_s")
    target = f"ws chain single-stream throughput >= {WS_TPUT_TARGET}x the plain chain's"
    if a is None or not b:
        out += [f"Target: {target}: not measured.", ""]
    else:
        met = "met" if a / b >= WS_TPUT_TARGET else "**not met**"
        out += [f"Target: {target}: {a / b:.2f}, {met}.", ""]
    return [*out, "Spread:", "", *_table(res, TUNNEL_COLS, spread=True), ""]


def _udp_section(res: dict[str, Any]) -> list[str]:
    """UDP relaying: rates, loss and CPU per datagram with ratios to socat and nginx, the
    target line, the spread and the CPU split."""
    cols = UDP_COLS + UDP_CPU_COLS
    if not {c[0] for c in cols} & set(res["scenarios"]):
        return []
    also = tuple(r for r in ("haproxy",) if r in res["relays"])
    out = [
        "## UDP relaying",
        "",
        "Each relay relays UDP and TCP on one port to one backend port (snirelay `-u`; nginx"
        " stream `listen ... udp` beside the TCP `listen`, `proxy_buffer_size 64k`; socat"
        " `-T 30 -b 65536 UDP4-LISTEN:...,fork,reuseaddr` with a TCP socat beside it, its"
        " UDP child handling the one client flow); the direct row is the client talking to"
        " the backend itself, the ceiling. HAProxy 2.6 has no UDP (n/a). Datagrams/s: iperf3"
        " `-u -b 0 -l 1200 -t D`, one flow sending 1,200-byte datagrams as fast as it can"
        " to the iperf3 server (its control connection is the TCP one); the rate and Mbit/s"
        " (payload) are what the server received, the loss what it did not (iperf3's"
        " count). Where it was lost, from the sockets' drop counters in /proc/net/udp (a"
        " separate count, so the two shares need not add up to the loss exactly): dropped"
        " at the relay's listening socket (the relay did not read them in time) or at the"
        " iperf3 server's (the relay forwarded them, the server did not read them in time:"
        " on few cores the sender, the relay and the server compete, and a relay that"
        " forwards more leaves the server less CPU). Forwarded = what arrived plus what the"
        " server's socket dropped: the relay's own rate, and its CPU is divided by that."
        " Echo: a Python client sends one 1,200-byte"
        " datagram at a time through the relay to a Python UDP echo for D s; round trips/s,"
        " p50/p99 and the relay's CPU per 1,000 datagrams relayed (two per round trip). The"
        " sender, the relay and the backend share the machine's cores, so with few cores the"
        " CPU per datagram is the figure to compare. Medians over the rounds; in brackets:"
        " ratio to socat (`s`) and to nginx stream (`n`). The check before timing: a"
        " datagram of 1,200 and one of 65,000 bytes echoed back whole through the relay.",
        "",
        *_table(res, UDP_COLS, spread=False, refs=UDP_REFS, also=also),
        "",
    ]
    parts, fwd = [], []
    for ref, bound in UDP_TARGETS:
        a, b = (
            _median(res, "udp_pps", "snirelay", "dgram_s"),
            _median(res, "udp_pps", ref, "dgram_s"),
        )
        if a is None or not b:
            parts.append(f">= {bound:.1f}x {ref}: not measured")
        else:
            met = "met" if a / b >= bound else "**not met**"
            parts.append(f">= {bound:.1f}x {ref}: {a / b:.2f}, {met}")
        ra = _median(res, "udp_pps", "snirelay", "fwd_dgram_s")
        fwd.append(f"{_ratio(ra, _median(res, 'udp_pps', ref, 'fwd_dgram_s'))}x {ref}")
    out += [
        f"Target: snirelay's datagrams/s (arrived) {'; '.join(parts)}. Forwarded by the"
        f" relay, not a target: {', '.join(fwd)}.",
        "",
    ]
    return [
        *out,
        "Spread:",
        "",
        *_table(res, UDP_COLS, spread=True, also=also),
        "",
        "Relay CPU per 1,000 datagrams, user and system apart (medians; `s`, `n`: ratios to"
        " socat and nginx):",
        "",
        *_table(res, UDP_CPU_COLS, spread=False, refs=UDP_REFS, also=also),
        "",
    ]


def _commit(git: str) -> str:
    """The run's commit as the report names it: the short hash (and whether src/ had
    uncommitted changes), not the subject, which the JSON keeps (a subject is prose
    the report's readers and checks would take for the page's own)."""
    dirty = " + uncommitted changes in src/"
    return git.split(" ", 1)[0] + (dirty if git.endswith(dirty) else "")


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    base = res.get("baseline")
    out: list[str] = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` from `bench/results/latest.json`; do not edit by hand",
        "(the analysis at the end is `bench/analysis.md`, included verbatim). Every relay runs",
        "in turn, in one run, on loopback, one worker/thread each, against the same backends;",
        "the load generators and backends share the same cores, so read the ratios, not the",
        "absolute figures.",
        "",
        "## How to run",
        "",
        "```",
        "make bench                      # = .venv/bin/python bench/run.py (3 rounds, ~5 min)",
        "make bench BENCH_ARGS='--baseline main'  # the same, plus snirelay as of main: before/after",
        ".venv/bin/python bench/run.py --only conn,sni --rounds 3 --baseline REF  # focused, minutes",
        ".venv/bin/python bench/run.py --quick    # 1 round, 1 s loads: smoke test",
        ".venv/bin/python bench/run.py --help",
        "```",
        "",
        "Load tools (Debian packages): `iperf3`, `wrk`, `apache2-utils` (ab); relays: `haproxy`,",
        "`nginx-light` + `libnginx-mod-stream`, `sniproxy`, `socat`. A missing tool skips its"
        " measurement with a note.",
        "",
        "## This run",
        "",
        f"- command: `{res['command']}` at commit `{_commit(res.get('git', '?'))}`",
        f"- started {res['started']}, took {res['elapsed_s']} s; {res['rounds']} round(s)"
        f" interleaved (relay order rotates each round), {res['duration_s']} s per load",
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, {m['os']},"
        f" Python {m['python']}, RLIMIT_NOFILE {res['nofile']}; load average (1/5/15 min)"
        f" {m.get('loadavg_start', '?')} at start, {m.get('loadavg_end', '?')} at end",
        "- relays: "
        + "; ".join(
            f"{v['label']}: {v['version']}" for k, v in res["relays"].items() if k != "direct"
        ),
    ]
    if base:
        out.append(
            f"- baseline: `{base['relay']}` is commit `{base['commit']}`, its `src/` unpacked"
            " from `git archive` and run with the same interpreter and venv (`PYTHONPATH`)"
        )
    out += [
        "- tools: " + "; ".join(f"{k}: {v}" for k, v in m["tools"].items()),
        "- loads: iperf3 `-t D [-P 8]`; ab `-c 32 -t D` (new connection per request, p50/p99 from"
        " `-e`); wrk `-t 1 -c 64 -d D` (keep-alive); idle: a Python client opens N connections"
        " and the relay's memory is read once the backend holds all N; TLS: 4 Python processes doing"
        " full TLS 1.3 handshakes + one request each, names alternating, through SNI routing"
        " (HAProxy `req.ssl_sni`, nginx `ssl_preread`, sniproxy's table, snirelay"
        " `[[endpoints.routes]]`)",
        "- CPU: utime and stime of the relay's process tree from /proc/PID/stat, read just"
        " before and just after the load, divided by the work done; shown as a total and as"
        " user and system apart. Memory: RSS of the relay's processes (PSS sum when it forks"
        " more than 2).",
        "",
        "## Checks before timing",
        "",
    ]
    # the TLS columns only for runs whose relays know those modes (older results lack them)
    tls_modes = [
        m for m in TLS_MODES if any(m in i.get("modes", ()) for i in res["relays"].values())
    ]
    udp = [UDP] if any(UDP in i.get("modes", ()) for i in res["relays"].values()) else []
    check_modes = ["forward", "sni", *tls_modes, *udp]
    titles = ["byte-exact, half-close each way (16 MiB)", "SNI routing"]
    titles += [{"terminate": "TLS termination", "reoriginate": "TLS re-origination"}[m]
               for m in tls_modes]  # fmt: skip
    titles += ["UDP: 1,200 and 65,000 B echoed whole" for _ in udp]
    out += [
        "| relay | version | " + " | ".join(titles) + " |",
        "|---|---|" + "---|" * len(titles),
    ]
    for name, info in res["relays"].items():
        if TUNNEL in info.get("modes", ()):
            continue  # the chains' checks are in their own section
        if info.get("skipped"):
            rest = " | skipped" * (len(titles) - 1)
            out.append(f"| {info['label']} | — | skipped: {info['skipped']}{rest} |")
            continue
        cells = [_check_cell(info, name, mode) for mode in check_modes]
        out.append(f"| {info['label']} | {info['version']} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Plain TCP forwarding",
        "",
        "Medians over the rounds. In brackets: ratio to the direct path (`d`) and to HAProxy (`h`)"
        " in the same run. Higher is better for rates; lower is better for latency, CPU and memory.",
        "",
        *_table(res, FORWARD_COLS, spread=False),
        "",
        "Spread (min–max over rounds, ± half-range as % of the median):",
        "",
        *_table(res, FORWARD_COLS, spread=True),
        "",
        "Relay CPU per unit of work, user and system apart (medians; `h`: ratio to HAProxy):",
        "",
        *_table(res, CPU_COLS, spread=False),
        "",
        "## SNI passthrough routing (TLS left end-to-end)",
        "",
        "The direct row is the client talking to each TLS backend itself. The Python client and",
        "the backends limit the absolute rate; the relay's CPU per handshake is the figure to compare.",
        "",
        *_sni_summary(res),
        *_table(res, SNI_COLS, spread=False),
        "",
        "Spread:",
        "",
        *_table(res, SNI_COLS, spread=True),
        "",
        *_tls_term_section(res),
        *_tunnel_section(res),
        *_udp_section(res),
        *_before_after(res),
        *_targets(res),
    ]
    if res["notes"] or any(b.get("errors") for s in res["results"].values() for b in s.values()):
        out += ["", "## Notes and errors", ""]
        out += [f"- {n}" for n in res["notes"]]
        for scen, per in res["results"].items():
            for relay, b in per.items():
                for e in b.get("errors", []):
                    out.append(f"- {scen} / {relay}: {e}")
    analysis = os.path.join(BENCH, "analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            out += ["", f.read().rstrip()]
    return "\n".join(out) + "\n"
