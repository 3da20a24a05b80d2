#!/usr/bin/env python3
"""Profile snirelay under one load with py-spy, and split its CPU into user and kernel.

How it works: starts the nginx HTTP backend and the iperf3 server (backends.py), one
snirelay instance in forward mode in front (mode udp for ``udp_pps``), runs the chosen
load (``connrate``: ab, a new connection per request; ``reqrate``: wrk on open
connections; ``tput1``: iperf3; ``udp_pps``: iperf3 ``-u -b 0 -l 1200``, as the bench's
UDP load) while ``py-spy record --format raw`` samples the relay, then prints the user/system
CPU split from /proc and the functions with the most samples (self and inclusive).
py-spy is optional (``pip install py-spy``); without it only the CPU split is shown.

With ``--strace N`` it instead counts the relay's system calls (``strace -c -f``) over
exactly N new connections (ab -n N), and prints them per connection: the cheapest way to
see why one relay's kernel time per connection is higher than another's. With the
``udp_pps`` load, N is datagrams (iperf3 ``-n``, 1,200 bytes each, sent as fast as
iperf3 can) and the calls are per datagram that reached the backend. ``--relay``
picks any relay from relays.py (py-spy applies to snirelay only).

Run: .venv/bin/python bench/profile.py [connrate|reqrate|tput1|udp_pps] [--seconds 8]
     .venv/bin/python bench/profile.py --strace 2000 --relay haproxy
     .venv/bin/python bench/profile.py udp_pps --strace 100000 --relay nginx
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from backends import Backends  # noqa: E402
from common import CLK_TCK, LOOPBACK, raise_nofile, stop, tree_pids, which  # noqa: E402
from relays import RELAYS, UDP  # noqa: E402

LOADS = ["connrate", "reqrate", "tput1", "udp_pps"]


def _user_sys(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/profile.py", description=__doc__.split("\n")[0])
    p.add_argument("load", nargs="?", default="connrate", choices=LOADS)
    p.add_argument("--seconds", type=int, default=8, help="load duration (1..60)")
    p.add_argument("--top", type=int, default=25, help="functions to show")
    p.add_argument("--relay", default="snirelay", help="relay to run (default snirelay)")
    p.add_argument(
        "--strace", type=int, default=0, metavar="N", help="syscalls over N conns (datagrams)"
    )
    a = p.parse_args()
    secs = max(1, min(60, a.seconds))
    raise_nofile()
    os.environ["PYTHONPATH"] = os.path.join(REPO, "src")
    work = tempfile.mkdtemp(prefix="snirelay-profile-")
    backends = Backends(work)
    relay = next(r for r in RELAYS if r.name == a.relay)
    inst = None
    spy = None
    try:
        backends.start_all()
        iperf = a.load in ("tput1", "udp_pps")
        target = backends.iperf_port if iperf else backends.http_port
        if target is None:
            print("backend missing:", "; ".join(backends.notes))
            return 1
        inst = relay.start(UDP if a.load == "udp_pps" else "forward", target, work, "profile")
        assert inst.pid is not None
        url = f"http://{LOOPBACK}:{inst.port}/"
        load = {
            "connrate": ["ab", "-q", "-r", "-c", "32", "-t", str(secs), "-n", "2000000", url],
            "reqrate": ["wrk", "-t", "1", "-c", "64", "-d", f"{secs}s", url],
            "tput1": ["iperf3", "-c", LOOPBACK, "-p", str(inst.port), "-t", str(secs)],
            "udp_pps": ["iperf3", "-c", LOOPBACK, "-p", str(inst.port), "-u", "-b", "0",
                        "-l", "1200", "-t", str(secs)],
        }[a.load]  # fmt: skip
        if a.strace and a.load == "udp_pps":
            n = min(a.strace, 1_000_000)
            argv = [*load[:-2], "-n", str(n * 1200), "-J"]  # n datagrams, then the count
            _strace(inst.pid, argv, _udp_arrived, "datagram that arrived", a.top)
            return 0
        if a.strace:
            n = min(a.strace, 100000)
            argv = ["ab", "-q", "-r", "-c", "8", "-n", str(n), url]
            _strace(inst.pid, argv, lambda _: n, "connection", a.top)
            return 0
        raw = f"{work}/pyspy.txt"
        if os.path.exists(raw):
            os.unlink(raw)
        if (
            a.relay == "snirelay"
            and which("py-spy")
            or os.path.exists(os.path.join(os.path.dirname(sys.executable), "py-spy"))
        ):
            exe = which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
            spy = subprocess.Popen(
                [exe, "record", "-p", str(inst.pid), "-d", str(secs), "-r", "250",
                 "--nonblocking", "-f", "raw", "-o", raw],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        u0, s0 = _user_sys(inst.pid)
        out = subprocess.run(load, capture_output=True, timeout=secs + 60, check=False)
        u1, s1 = _user_sys(inst.pid)
        for line in out.stdout.decode(errors="replace").splitlines():
            if any(k in line for k in ("Requests per second", "Requests/sec", "receiver")):
                print(line.strip())
        print(f"relay CPU: user {u1 - u0:.2f}s, system {s1 - s0:.2f}s over {secs}s of load")
        if spy is not None:
            spy.wait(secs + 30)
        if os.path.exists(raw):
            _summarise(raw, a.top)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if inst is not None and inst.proc is not None:
            stop(inst.proc)
        backends.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _udp_arrived(stdout: bytes) -> int:
    """Datagrams the iperf3 server received, from the client's -J output."""
    end = json.loads(stdout)["end"]
    recv = end.get("sum_received", end["sum"])
    return int(recv["packets"] - recv["lost_packets"])


def _strace(
    pid: int, load: list[str], units_of: Callable[[bytes], int], unit: str, top: int
) -> None:
    """strace -c -f on the relay's process tree (every live process, and what they fork)
    over one run of ``load``; calls per ``units_of(stdout)``."""
    import time

    log = tempfile.mktemp(prefix="snirelay-strace-")
    attach = [a for p in tree_pids(pid) for a in ("-p", str(p))]  # nginx: the worker too
    tr = subprocess.Popen(
        ["strace", "-c", "-f", "-o", log, *attach],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # let strace attach to every thread
    out = subprocess.run(load, capture_output=True, timeout=120, check=False)
    n = max(1, units_of(out.stdout))
    time.sleep(0.5)
    tr.terminate()
    tr.wait(10)
    with open(log) as f:
        rows = [r for r in (line.split() for line in f) if r and r[0][0].isdigit()]
    rows = [r for r in rows if r[-1] != "total"]
    os.unlink(log)
    print(f"system calls per {unit} over {n} (strace -c -f):")
    total = 0.0
    for r in rows:
        calls = int(r[3])
        total += calls
    for r in sorted(rows, key=lambda r: -int(r[3]))[:top]:
        print(f"  {int(r[3]) / n:6.2f}  {r[-1]}")
    print(f"  {total / n:6.2f}  total")


def _summarise(raw: str, top: int) -> None:
    """py-spy raw format: 'frame;frame;...;leaf count' per line."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        with open(raw) as f:
            lines = f.read().splitlines()
    except OSError:
        print("py-spy produced no profile")
        return
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [x.split(" (")[0] + " " + x.split("/")[-1].rstrip(")") for x in stack.split(";")]
        total += count
        self_c[frames[-1]] += count
        for fr in set(frames):
            incl[fr] += count
    print(f"\npy-spy: {total} samples (idle samples excluded by py-spy)")
    print("\nself (leaf) share:")
    for fr, c in self_c.most_common(top):
        print(f"  {c / total:6.1%}  {fr}")
    print("\ninclusive share:")
    for fr, c in incl.most_common(top):
        print(f"  {c / total:6.1%}  {fr}")


if __name__ == "__main__":
    sys.exit(main())
