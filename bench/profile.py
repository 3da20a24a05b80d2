#!/usr/bin/env python3
"""Profile snirelay under one load with py-spy, and split its CPU into user and kernel.

How it works: starts the nginx HTTP backend and the iperf3 server (backends.py), one
snirelay instance in forward mode in front, runs the chosen load (``connrate``: ab, a
new connection per request; ``reqrate``: wrk on open connections; ``tput1``: iperf3)
while ``py-spy record --format raw`` samples the relay, then prints the user/system
CPU split from /proc and the functions with the most samples (self and inclusive).
py-spy is optional (``pip install py-spy``); without it only the CPU split is shown.

With ``--strace N`` it instead counts the relay's system calls (``strace -c -f``) over
exactly N new connections (ab -n N), and prints them per connection: the cheapest way to
see why one relay's kernel time per connection is higher than another's. ``--relay``
picks any relay from relays.py (py-spy applies to snirelay only).

Run: .venv/bin/python bench/profile.py [connrate|reqrate|tput1] [--seconds 8]
     .venv/bin/python bench/profile.py --strace 2000 --relay haproxy
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from backends import Backends  # noqa: E402
from common import CLK_TCK, LOOPBACK, raise_nofile, stop, which  # noqa: E402
from relays import RELAYS  # noqa: E402


def _user_sys(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/profile.py", description=__doc__.split("\n")[0])
    p.add_argument("load", nargs="?", default="connrate", choices=["connrate", "reqrate", "tput1"])
    p.add_argument("--seconds", type=int, default=8, help="load duration (1..60)")
    p.add_argument("--top", type=int, default=25, help="functions to show")
    p.add_argument("--relay", default="snirelay", help="relay to run (default snirelay)")
    p.add_argument("--strace", type=int, default=0, metavar="N", help="syscalls over N conns")
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
        target = backends.iperf_port if a.load == "tput1" else backends.http_port
        if target is None:
            print("backend missing:", "; ".join(backends.notes))
            return 1
        inst = relay.start("forward", target, work, "profile")
        assert inst.pid is not None
        url = f"http://{LOOPBACK}:{inst.port}/"
        load = {
            "connrate": ["ab", "-q", "-r", "-c", "32", "-t", str(secs), "-n", "2000000", url],
            "reqrate": ["wrk", "-t", "1", "-c", "64", "-d", f"{secs}s", url],
            "tput1": ["iperf3", "-c", LOOPBACK, "-p", str(inst.port), "-t", str(secs)],
        }[a.load]
        if a.strace:
            _strace(inst.pid, url, min(a.strace, 100000), a.top)
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


def _strace(pid: int, url: str, n: int, top: int) -> None:
    import time

    log = tempfile.mktemp(prefix="snirelay-strace-")
    tr = subprocess.Popen(
        ["strace", "-c", "-f", "-o", log, "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # let strace attach to every thread
    subprocess.run(["ab", "-q", "-r", "-c", "8", "-n", str(n), url], capture_output=True,
                   timeout=120, check=False)  # fmt: skip
    time.sleep(0.5)
    tr.terminate()
    tr.wait(10)
    with open(log) as f:
        rows = [r for r in (line.split() for line in f) if r and r[0][0].isdigit()]
    rows = [r for r in rows if r[-1] != "total"]
    os.unlink(log)
    print(f"system calls per connection over {n} connections (strace -c -f):")
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
