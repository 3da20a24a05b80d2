"""Render one benchmark result (the JSON written by run.py) as BENCHMARKS.md.

How it works: pure formatting. Each table cell is the median over the rounds, with
"(x direct / x HAProxy)" ratios of medians from the same run; a second table gives the
spread (min-max over rounds). The targets of issue 4 are checked on snirelay's ratios
to HAProxy. The hand-written analysis (profile findings) is read from
bench/analysis.md and included verbatim, so regenerating never loses it.
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
)
# issue 4's targets: (scenario, metric, text, bound, direction)
TARGETS: tuple[tuple[str, str, str, float, int], ...] = (
    ("tput1", "gbit_s", "single-stream throughput >= 1.0x", 1.0, 1),
    ("connrate", "conn_s", "new connections/s >= 0.8x", 0.8, 1),
    ("connrate", "p99_ms", "new-connection p99 latency <= 1.5x", 1.5, -1),
    ("reqrate", "req_s", "request/response rate >= 0.8x", 0.8, 1),
    ("idle5000", "mem_mb", "memory at 5,000 idle connections <= 1.0x", 1.0, -1),
    ("tls", "hs_s", "SNI passthrough handshakes/s >= 0.8x", 0.8, 1),
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


def _cell(res: dict[str, Any], relay: str, col: tuple[str, str, str, str, int]) -> str:
    scen, metric, _, fmt, _ = col
    v = _median(res, scen, relay, metric)
    if v is None:
        return _why_missing(res, scen, relay)
    text = fmt.format(v)
    if relay == "direct" or _median(res, scen, "direct", metric) is None:
        rd = None
    else:
        rd = _ratio(v, _median(res, scen, "direct", metric))
    rh = None if relay == "haproxy" else _ratio(v, _median(res, scen, "haproxy", metric))
    if metric == "mem_mb":
        s = res["results"][scen][relay]["summary"]
        if s.get("processes", {}).get("median", 1) > 2:
            text += " PSS"
    parts = [p for p in (rd and f"{rd} d", rh and f"{rh} h") if p]
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
    res: dict[str, Any], cols: tuple[tuple[str, str, str, str, int], ...], spread: bool
) -> list[str]:
    relays = [r for r in res["relays"] if any(r in res["results"].get(c[0], {}) for c in cols)]
    relays += [r for r in res["relays"] if r not in relays and res["relays"][r].get("skipped")]
    head = "| relay | " + " | ".join(c[2] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in relays:
        label = res["relays"][r]["label"]
        cells = [(_spread if spread else _cell)(res, r, c) for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
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
        ".venv/bin/python bench/run.py --quick    # 1 round, 1 s loads: smoke test",
        ".venv/bin/python bench/run.py --help",
        "```",
        "",
        "Load tools (Debian packages): `iperf3`, `wrk`, `apache2-utils` (ab); relays: `haproxy`,",
        "`nginx-light` + `libnginx-mod-stream`, `socat`. A missing tool skips its measurement with a note.",
        "",
        "## This run",
        "",
        f"- command: `{res['command']}` at commit `{res.get('git', '?')}`",
        f"- started {res['started']}, took {res['elapsed_s']} s; {res['rounds']} round(s)"
        f" interleaved (relay order rotates each round), {res['duration_s']} s per load",
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, {m['os']},"
        f" Python {m['python']}, RLIMIT_NOFILE {res['nofile']}; load average (1/5/15 min)"
        f" {m.get('loadavg_start', '?')} at start, {m.get('loadavg_end', '?')} at end",
        "- relays: "
        + "; ".join(
            f"{v['label']}: {v['version']}" for k, v in res["relays"].items() if k != "direct"
        ),
        "- tools: " + "; ".join(f"{k}: {v}" for k, v in m["tools"].items()),
        "- loads: iperf3 `-t D [-P 8]`; ab `-c 32 -t D` (new connection per request, p50/p99 from"
        " `-e`); wrk `-t 1 -c 64 -d D` (keep-alive); idle: a Python client opens N connections"
        " and the relay's memory is read once the backend holds all N; TLS: 4 Python processes doing"
        " full TLS 1.3 handshakes + one request each, names alternating, through SNI routing"
        " (HAProxy `req.ssl_sni`, nginx `ssl_preread`, snirelay `[[endpoints.routes]]`)",
        "- CPU: utime+stime of the relay's process tree from /proc across the load, divided by"
        " the work done. Memory: RSS of the relay's processes (PSS sum when it forks more than 2).",
        "",
        "## Checks before timing",
        "",
        "| relay | version | byte-exact, half-close each way (16 MiB) | SNI routing |",
        "|---|---|---|---|",
    ]
    for name, info in res["relays"].items():
        if info.get("skipped"):
            out.append(f"| {info['label']} | — | skipped: {info['skipped']} | skipped |")
            continue
        cells = []
        for mode in ("forward", "sni"):
            if mode in info["failed"]:
                cells.append(f"**FAILED** ({info['failed'][mode]}) — not timed")
            elif name == "socat" and mode == "sni":
                cells.append("n/a (no SNI routing)")
            else:
                cells.append("pass")
        out.append(f"| {info['label']} | {info['version']} | {cells[0]} | {cells[1]} |")
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
        "## SNI passthrough routing (TLS left end-to-end)",
        "",
        "The direct row is the client talking to each TLS backend itself. The Python client and",
        "the backends limit the absolute rate; the relay's CPU per handshake is the figure to compare.",
        "",
        *_table(res, SNI_COLS, spread=False),
        "",
        "Spread:",
        "",
        *_table(res, SNI_COLS, spread=True),
        "",
        "## snirelay against issue 4's targets (ratios to HAProxy, medians)",
        "",
        "| target | snirelay / HAProxy | met |",
        "|---|---|---|",
    ]
    for scen, metric, text, bound, direction in TARGETS:
        a, b = _median(res, scen, "snirelay", metric), _median(res, scen, "haproxy", metric)
        if a is None or b is None or b == 0:
            bucket = res["results"].get(scen, {}).get("snirelay", {})
            if bucket.get("errors"):
                out.append(f"| {text} | failed: {bucket['errors'][0]} | **no** |")
            else:
                out.append(f"| {text} | not measured | — |")
            continue
        r = a / b
        ok = r >= bound if direction > 0 else r <= bound
        out.append(f"| {text} | {r:.2f} | {'yes' if ok else '**no**'} |")
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
