#!/usr/bin/env python3
"""Side-by-side benchmark: snirelay vs HAProxy, nginx stream, sniproxy, socat and the direct path.

How it works: the backends (iperf3, nginx HTTP/HTTPS, Python integrity and idle
holders) start once. Every relay that is installed first passes the checks of each mode
it will be timed in (byte-exact transfer with half-close each way for ``forward``; SNI
routing reaching each backend for ``sni``; datagrams of 1,200 and 65,000 bytes echoed
back whole for ``udp``) -- a relay that fails is marked and not timed
in that mode. Then, for each round, each scenario runs against a fresh instance of every
relay in turn (the relay order rotates per round, so rounds interleave). Medians, min
and max over the rounds, ratios to HAProxy and to the direct path, machine and version
details go to bench/results/<timestamp>.json, latest.json and BENCHMARKS.md. Every load
is bounded in time; only processes started here are stopped.

``--only conn,sni`` narrows the loads (scenario names or the groups in ``GROUPS``; the
checks of their modes still run). ``--baseline REF`` unpacks ``git archive REF src``
into the work directory and runs that build, with the same interpreter and venv, as one
more relay named ``snirelay@REF`` in every scenario: before and after measured in one
run, interleaved, on the same backends.

Run: .venv/bin/python bench/run.py            (make bench; ~5 minutes)
     .venv/bin/python bench/run.py --quick    (1 round, 1 s loads: a smoke test)
     .venv/bin/python bench/run.py --only conn,sni --rounds 3 --baseline main
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import report  # noqa: E402
from backends import Backends  # noqa: E402
from common import BenchError, raise_nofile, run_text, stop, which  # noqa: E402
from relays import RELAYS, Relay, baseline  # noqa: E402
from scenarios import SCENARIOS, Context, Scenario  # noqa: E402

TOOLS = {
    "iperf3": ["iperf3", "--version"],
    "wrk": ["wrk", "-v"],
    "ab": ["ab", "-V"],
    "openssl": ["openssl", "version"],
    "perf": ["perf", "--version"],
}


# --only: short names for groups of load scenarios (scenario names work too)
GROUPS: dict[str, tuple[str, ...]] = {
    "tput": ("tput1", "tput8"),
    "conn": ("connrate",),
    "req": ("reqrate",),
    "mem": ("idle1000", "idle5000"),
    "idle": ("idle1000", "idle5000"),
    "sni": ("tls",),
    "tlsterm": (
        "tls_term",
        "tls_reorig",
        "tls_reorig_resume",
        "tls_term_req",
        "tls_reorig_req",
        "tls_term_tput1",
        "tls_reorig_tput1",
        "tls_term_idle1000",
        "tls_reorig_idle1000",
    ),
    "tlshs": ("tls_term", "tls_reorig"),
    "tlsresume": ("tls_reorig_resume",),
    "tlstput": ("tls_term_tput1", "tls_reorig_tput1"),
    "tlsmem": ("tls_term_idle1000", "tls_reorig_idle1000"),
    "ws": ("tunnel_tput1", "tunnel_connrate", "tunnel_idle1000"),
    "udp": ("udp_pps", "udp_echo_rtt"),
    "forward": ("tput1", "tput8", "connrate", "reqrate", "idle1000", "idle5000"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark snirelay side by side with HAProxy, nginx stream, sniproxy, "
        "socat and the direct path on loopback; writes bench/results/*.json and BENCHMARKS.md.",
    )
    p.add_argument("--quick", action="store_true", help="1 round, 1 s loads (smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    p.add_argument("--duration", type=int, default=None, help="seconds per load (default 2)")
    names = [r.name for r in RELAYS]
    p.add_argument("--relays", default=",".join(names), help=f"comma list of {names}")
    loads = [s.name for s in SCENARIOS if s.kind == "load"]
    p.add_argument(
        "--only",
        "--scenarios",
        dest="only",
        default=None,
        metavar="LIST",
        help=f"comma list of load scenarios {loads} or groups {sorted(GROUPS)} "
        "(default: all); the correctness checks of the modes they use always run first",
    )
    p.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also run snirelay as of git REF (its src/ via git archive, same venv) as "
        "relay 'snirelay@REF' in every scenario, for a before/after table",
    )
    p.add_argument("--out", default=os.path.join(BENCH, "results"), help="results directory")
    p.add_argument(
        "--markdown", default=os.path.join(REPO, "BENCHMARKS.md"), help="report to regenerate"
    )
    p.add_argument("--no-markdown", action="store_true", help="write JSON only")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    a = p.parse_args(argv)
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    if a.duration is None:
        a.duration = 1 if a.quick else 2
    if not 1 <= a.rounds <= 20 or not 1 <= a.duration <= 60:
        p.error("--rounds must be 1..20 and --duration 1..60")
    unknown = [r for r in a.relays.split(",") if r not in names]
    if unknown:
        p.error(f"--relays: unknown {unknown}; known: {names}")
    try:
        a.scenarios = select_scenarios(a.only)
    except ValueError as e:
        p.error(str(e))
    return a


def select_scenarios(only: str | None) -> list[Scenario]:
    """The loads asked for (names or GROUPS) plus the checks of every mode they use."""
    if only is None:
        return list(SCENARIOS)
    by_name = {s.name: s for s in SCENARIOS}
    wanted: set[str] = set()
    for token in (t.strip() for t in only.split(",") if t.strip()):
        if token in GROUPS:
            wanted.update(GROUPS[token])
        elif token in by_name:
            wanted.add(token)
        else:
            raise ValueError(
                f"--only: unknown {token!r}; scenarios {sorted(by_name)}, groups {sorted(GROUPS)}"
            )
    modes = {by_name[n].mode for n in wanted}
    return [s for s in SCENARIOS if s.name in wanted or (s.kind == "check" and s.mode in modes)]


def extract_baseline(ref: str, workdir: str) -> tuple[str, str]:
    """``git archive REF src`` unpacked under workdir: (path of its src/, "short-hash subject")."""
    commit = run_text(["git", "-C", REPO, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"])
    commit = commit.strip()
    if len(commit) != 40:
        raise BenchError(f"--baseline: {ref!r} is not a commit in {REPO}")
    dest = os.path.join(workdir, "baseline")
    os.makedirs(dest)
    archive = subprocess.run(
        ["git", "-C", REPO, "archive", commit, "src"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if archive.returncode != 0:
        raise BenchError(f"--baseline: git archive {ref} src failed: {archive.stderr[-300:]!r}")
    untar = subprocess.run(
        ["tar", "-x", "-C", dest], input=archive.stdout, capture_output=True, timeout=60
    )
    if untar.returncode != 0 or not os.path.isdir(os.path.join(dest, "src", "snirelay")):
        raise BenchError(f"--baseline: unpacking {ref}'s src/ failed: {untar.stderr[-300:]!r}")
    subject = run_text(["git", "-C", REPO, "log", "-1", "--format=%h %s", commit]).strip()
    return os.path.join(dest, "src"), subject or commit


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    tools: dict[str, str] = {}
    for name, argv in TOOLS.items():
        path = which(name)
        if path is None:
            tools[name] = "not installed"
            continue
        lines = [x for x in run_text([path, *argv[1:]]).splitlines() if x.strip()]
        tools[name] = lines[0].strip() if lines else "?"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": run_text(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]).strip(),
        "python": sys.version.split()[0],
        "loadavg_start": _loadavg(),
        "tools": tools,
    }


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def summarise(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for v in values for k in v})
    out = {}
    for k in keys:
        xs = [v[k] for v in values if k in v]
        out[k] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
    return out


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    nofile = raise_nofile()
    # snirelay from this checkout even before it is pip-installed (relays.py sets
    # PYTHONPATH for each snirelay build it starts; this covers the rest)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        x for x in (os.path.join(REPO, "src"), os.environ.get("PYTHONPATH")) if x
    )
    wanted_relays = args.relays.split(",")
    relays = [r for r in RELAYS if r.name in wanted_relays]
    scenarios: list[Scenario] = args.scenarios
    workdir = tempfile.mkdtemp(prefix="snirelay-bench-")
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": shlex.join(
            [".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "nofile": nofile,
        "git": run_text(["git", "-C", REPO, "log", "-1", "--format=%h %s"]).strip()
        + (
            " + uncommitted changes in src/"
            if run_text(["git", "-C", REPO, "status", "--porcelain", "src"]).strip()
            else ""
        ),
        "machine": machine(),
        "relays": {},
        "scenarios": {
            s.name: {"title": s.title, "mode": s.mode, "kind": s.kind} for s in scenarios
        },
        "notes": [],
        "results": {},
    }
    if args.baseline:
        try:
            src, commit = extract_baseline(args.baseline, workdir)
        except BenchError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"bench/run.py: {e}", file=sys.stderr)
            return 2
        base = baseline(args.baseline, src)
        # next to snirelay: in every round (whatever the rotation) the two builds run one
        # right after the other, as close to the same conditions as this machine allows
        at = next((i + 1 for i, r in enumerate(relays) if r.name == "snirelay"), len(relays))
        relays.insert(at, base)
        res["baseline"] = {"ref": args.baseline, "commit": commit, "relay": base.name}
        log(f"baseline {base.name}: {commit} (src/ unpacked in {src})")
    log(f"workdir {workdir}; {args.rounds} round(s), {args.duration}s per load")
    backends = Backends(workdir)
    try:
        backends.start_all()
        res["notes"].extend(backends.notes)
        runnable: list[Relay] = []
        for r in relays:
            why = r.missing()
            res["relays"][r.name] = {
                "label": r.label,
                "kind": r.kind,
                "modes": sorted(r.modes),
                "version": "not installed" if why else r.version(),
                "skipped": why,
                "failed": {},
                "checked": [],
            }
            if why:
                log(f"skip {r.name}: {why}")
            else:
                runnable.append(r)
        ctx = Context(backends, workdir, args.duration, args.quick)
        for s in (s for s in scenarios if s.kind == "check"):
            for r in runnable:
                if s.mode not in r.modes or s.target(backends) is None:
                    continue
                info = res["relays"][r.name]
                if s.mode in info["failed"]:
                    continue
                m = _one(r, s, ctx, tag=f"{s.name}")
                if "error" in m:
                    info["failed"][s.mode] = f"{s.name}: {m['error']}"
                    log(f"FAIL {r.name} {s.name}: {m['error']} -> not timed in mode {s.mode}")
                else:
                    info["checked"].append(s.name)
                    log(f"ok   {r.name} {s.name}")
        loads = [s for s in scenarios if s.kind == "load"]
        for rnd in range(args.rounds):
            order = (
                runnable[rnd % len(runnable) :] + runnable[: rnd % len(runnable)]
                if runnable
                else []
            )
            for s in loads:
                for r in order:
                    if not _applicable(r, s, backends, res):
                        continue
                    m = _one(r, s, ctx, tag=f"{s.name}-{rnd}")
                    bucket = (
                        res["results"].setdefault(s.name, {}).setdefault(r.name, {"rounds": []})
                    )
                    bucket["rounds"].append(m)
                    log(f"round {rnd + 1} {s.name:9} {r.name:9} {_fmt(m)}")
    finally:
        backends.close()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    for per_relay in res["results"].values():
        for bucket in per_relay.values():
            good = [m for m in bucket["rounds"] if "error" not in m]
            bucket["summary"] = summarise(good)
            errs = [m["error"] for m in bucket["rounds"] if "error" in m]
            if errs:
                bucket["errors"] = errs
    res["elapsed_s"] = round(time.time() - started, 1)
    res["machine"]["loadavg_end"] = _loadavg()
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    for name in (f"{stamp}.json", "latest.json"):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(res, f, indent=1, sort_keys=False)
            f.write("\n")
    log(f"wrote {args.out}/{stamp}.json ({res['elapsed_s']}s)")
    if not args.no_markdown:
        with open(args.markdown, "w") as f:
            f.write(report.render(res))
        log(f"wrote {args.markdown}")
    return 0


def _applicable(r: Relay, s: Scenario, backends: Backends, res: dict[str, Any]) -> bool:
    if s.mode not in r.modes or s.mode in res["relays"][r.name]["failed"]:
        return False
    if s.needs_relay_process and r.name == "direct":
        return False
    if any(which(t) is None for t in s.tools):
        note = f"{s.name}: {', '.join(s.tools)} not installed, not measured"
        if note not in res["notes"]:
            res["notes"].append(note)
        return False
    return s.target(backends) is not None


def _one(r: Relay, s: Scenario, ctx: Context, tag: str) -> dict[str, Any]:
    """Start a fresh instance of ``r``, run ``s`` once, stop it. Errors become a record."""
    target = s.target(ctx.backends)
    if target is None:
        return {"error": "backend not available"}
    inst = None
    try:
        inst = r.start(s.mode, target, ctx.workdir, tag)
        time.sleep(0.2)
        return dict(s.measure(inst, ctx))
    except (BenchError, OSError, ValueError, KeyError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # a harness bug must not lose the other relays' results
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        if inst is not None and inst.proc is not None:
            stop(inst.proc)


def _fmt(m: dict[str, Any]) -> str:
    if "error" in m:
        return f"ERROR {m['error']}"
    return " ".join(f"{k}={v:.3g}" for k, v in m.items())


if __name__ == "__main__":
    sys.exit(main())
