"""User-space instructions per connection, counted by callgrind: a before/after figure
that a noisy machine cannot move.

    .venv/bin/python bench/instructions.py [--baseline REF] [--connections N]

How it works: for each build (this tree's src/, and with `--baseline REF` that git
ref's src/ unpacked from `git archive`), the relay runs under `valgrind
--tool=callgrind` in two modes: `plain` (an endpoint without routes) and `routed`
(SNI routing: every connection sniffed, decided, connected and replayed). A client
opens N connections one after the other; each sends a captured ClientHello (curl's,
tests/vectors), the backend answers 1,500 bytes, the client 100, and the connection
closes; `routed-5rt` does five such round trips, so its difference from `routed`, over
four, is the cost of one round trip (two readiness events through the pump), the part
that dominates a TLS handshake relayed in passthrough. The relay's instruction
count with N connections minus its count with none (start-up and shutdown) divided by
N is the figure. Callgrind counts instructions, not time, so the same build, load and
machine give the same count (a few hundred instructions apart), whatever else runs.
Kernel work (system time) is not counted: it is the same for both builds when the
system calls are.

Needs valgrind (Debian package). Takes about a minute per build and mode.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELLO = (REPO / "tests" / "vectors" / "clienthello" / "curl_sni_http2.bin").read_bytes()
ANSWER = b"x" * 1500
ROUND_TRIPS = {"plain": 1, "routed": 1, "routed-5rt": 5}  # answers per connection

CONFIGS: dict[str, str] = {
    "plain": """
[log]
level = "off"
[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:{backend}"
""",
    "routed": """
[log]
level = "off"
[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:{backend}"
[[endpoints.routes]]
server_names = ["emby.example.com"]
remote = "127.0.0.1:{backend}"
""",
}


CONFIGS["routed-5rt"] = CONFIGS["routed"]  # the same relay; the client makes 5 round trips


def backend(rounds: int) -> tuple[socket.socket, int]:
    """Reads the hello, answers 1,500 bytes and reads 100, `rounds` times, then waits
    for the client's close."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=1024)

    def serve(c: socket.socket) -> None:
        with c:
            c.settimeout(30)
            try:
                c.recv(65536)
                for _ in range(rounds):
                    c.sendall(ANSWER)
                    c.recv(100)
                c.recv(100)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock, lsock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)  # valgrind starts slowly; a bounded poll
    raise SystemExit(f"relay did not listen on {port} within {timeout}s")


def load(port: int, n: int, rounds: int) -> None:
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(HELLO)
            for _ in range(rounds):
                got = 0
                while got < len(ANSWER):
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    got += len(chunk)
                c.sendall(b"y" * 100)


def count(src: Path, mode: str, n: int, work: Path) -> int:
    """Instructions of one relay run with `n` connections (plus the readiness probe)."""
    lsock, bport = backend(ROUND_TRIPS[mode])
    port = free_port()
    cfg = work / f"{mode}.toml"
    cfg.write_text(CONFIGS[mode].format(port=port, backend=bport))
    out = work / f"cg.{mode}.{n}.out"
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        + ["-m", "snirelay", "-c", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 120)
        load(port, n, ROUND_TRIPS[mode])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lsock.close()
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no instruction count in {out}")


def unpack(ref: str, work: Path) -> Path:
    dest = work / "baseline"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", metavar="REF", help="also count snirelay as of git REF")
    ap.add_argument("--connections", type=int, default=1000, metavar="N")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snirelay-instr-") as tmp:
        work = Path(tmp)
        builds = [("this tree", REPO / "src")]
        if args.baseline:
            builds.insert(0, (f"snirelay@{args.baseline}", unpack(args.baseline, work)))
        results: dict[tuple[str, str], float] = {}
        for mode in CONFIGS:
            for name, src in builds:
                idle = count(src, mode, 0, work)
                busy = count(src, mode, args.connections, work)
                per = (busy - idle) / args.connections
                results[(name, mode)] = per
                print(f"{name:24} {mode:10} {per:10,.0f} instructions per connection")
        for name, _ in builds:
            trip = (results[(name, "routed-5rt")] - results[(name, "routed")]) / 4
            print(f"{name:24} one round trip through the pump: {trip:,.0f} instructions")
        if args.baseline:
            base = builds[0][0]
            for mode in CONFIGS:
                ratio = results[("this tree", mode)] / results[(base, mode)]
                print(f"{mode}: this tree / {base} = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
