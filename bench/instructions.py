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

With `--peer haproxy` HAProxy is counted too, under the same load, with the config
`make bench` gives it (bench/relays.py): one thread, `no-tls-tickets`, the same ECDSA
certificate. The split then says where each relay's instructions go: OpenSSL's work
(libcrypto, libssl) against the relay's own (libpython for snirelay, the haproxy
binary for HAProxy) and libc's.

Needs valgrind (Debian package). Takes about a minute per build and mode.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from backends import RelayTLS
from relays import _haproxy_conf

REPO = Path(__file__).resolve().parent.parent
HELLO = (REPO / "tests" / "vectors" / "clienthello" / "curl_sni_http2.bin").read_bytes()
ANSWER = b"x" * 1500
ROUND_TRIPS = {
    "plain": 1,
    "routed": 1,
    "routed-5rt": 5,
    "terminate": 1,
    "terminate-20rt": 20,
    "reoriginate": 1,
}
# the client's side is TLS, ended at the relay
TLS_MODES = ("terminate", "terminate-20rt", "reoriginate")
# a mode of many round trips -> (the same relay with one, what the difference crosses)
TRIP_MODES = {"routed-5rt": ("routed", "the pump"), "terminate-20rt": ("terminate", "the TLS pump")}

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
# TLS ended at the relay (an ECDSA P-256 certificate, tickets off: every connection a
# full handshake), as bench/relays.py runs it; "reoriginate" also opens TLS to a backend
# that speaks TLS itself (with resumption, as a real backend would offer it)
CONFIGS["terminate"] = """
[log]
level = "off"
[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:{backend}"
listen_transport = "tls;cert={cert};key={key}"
network = {{ tls_session_tickets = false }}
"""
CONFIGS["terminate-20rt"] = CONFIGS["terminate"]  # 20 round trips through the TLS pump
CONFIGS["reoriginate"] = CONFIGS["terminate"].replace(
    "network =", 'remote_transport = "tls;sni=backend.example.com;ca={ca}"\nnetwork ='
)


class Certs:
    """A test CA (trustme) and ECDSA P-256 certificates for the relay and the backend."""

    def __init__(self, work: Path) -> None:
        import trustme

        ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
        relay = ca.issue_cert("relay.example.com", key_type=trustme.KeyType.ECDSA)
        back = ca.issue_cert("backend.example.com", key_type=trustme.KeyType.ECDSA)
        self.ca, self.cert, self.key = work / "ca.pem", work / "relay.pem", work / "relay.key"
        ca.cert_pem.write_to_path(str(self.ca))
        relay.cert_chain_pems[0].write_to_path(str(self.cert))
        relay.private_key_pem.write_to_path(str(self.key))
        self.combined = work / "relay-combined.pem"  # HAProxy's crt: chain, then key
        self.combined.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        self.backend = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        back.configure_cert(self.backend)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(self.client)


def backend(rounds: int, tls: ssl.SSLContext | None = None) -> tuple[socket.socket, int]:
    """Reads the hello, answers 1,500 bytes and reads 100, `rounds` times, then waits
    for the client's close (over TLS with `tls`)."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=1024)

    def serve(c: socket.socket) -> None:
        if tls is not None:
            try:
                c.settimeout(30)
                c = tls.wrap_socket(c, server_side=True)
            except OSError:
                c.close()
                return
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


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:`port`? Read from the kernel's table, not
    by connecting: a probe connection would be the relay's to handle, and how many
    probes a start takes varies with valgrind's start-up (it moved the figures by
    up to 170k instructions per connection)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # TCP_LISTEN
                return True
    return False


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        time.sleep(0.1)  # valgrind starts slowly; a bounded poll
    raise SystemExit(f"relay did not listen on {port} within {timeout}s")


def load(port: int, n: int, rounds: int, tls: ssl.SSLContext | None = None) -> None:
    for i in range(n):
        # the first connection may wait for the end of a start-up under valgrind (the
        # socket listens before HAProxy serves it)
        with socket.create_connection(("127.0.0.1", port), timeout=120 if i == 0 else 30) as raw:
            c = raw if tls is None else tls.wrap_socket(raw, server_hostname="relay.example.com")
            c.sendall(HELLO)
            for _ in range(rounds):
                got = 0
                while got < len(ANSWER):
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    got += len(chunk)
                c.sendall(b"y" * 100)


def snirelay_config(mode: str, port: int, bport: int, work: Path, certs: Certs | None) -> Path:
    cfg = work / f"{mode}.toml"
    files = {"cert": certs.cert, "key": certs.key, "ca": certs.ca} if certs else {}
    cfg.write_text(CONFIGS[mode].format(port=port, backend=bport, **files))
    return cfg


# snirelay's modes as bench/relays.py names HAProxy's
HAPROXY_MODES = {
    "plain": "forward",
    "routed": "sni",
    "routed-5rt": "sni",
    "terminate": "terminate",
    "terminate-20rt": "terminate",
    "reoriginate": "reoriginate",
}


def haproxy_config(mode: str, port: int, bport: int, work: Path, certs: Certs | None) -> Path:
    """HAProxy's config for `mode`, as `make bench` writes it (bench/relays.py)."""
    tls = None
    if certs is not None:
        tls = RelayTLS(str(certs.cert), str(certs.key), str(certs.combined), str(certs.ca))
    # the routed modes' ClientHello names emby.example.com; re-originating, the
    # backend's certificate is for backend.example.com
    name = "backend.example.com" if mode == "reoriginate" else "emby.example.com"
    cfg = work / f"haproxy-{mode}.cfg"
    cfg.write_text(_haproxy_conf(HAPROXY_MODES[mode], port, {name: bport}, bport, tls))
    return cfg


def run_loaded(
    argv: Callable[[Path], list[str]],
    mode: str,
    n: int,
    work: Path,
    certs: Certs | None,
    env: dict[str, str] | None = None,
    config: Callable[[str, int, int, Path, Certs | None], Path] = snirelay_config,
    warmup: int = 0,
) -> None:
    """One relay run under `mode`'s load: its backend and config (in `work`, written by
    `config`), the relay started as `argv(config file)`, `warmup` + `n` connections one
    after the other, then SIGINT (the relay writes its counts as it exits)."""
    tls = mode in TLS_MODES
    assert certs is not None or not tls
    lsock, bport = backend(
        ROUND_TRIPS[mode], certs.backend if certs and mode == "reoriginate" else None
    )
    port = free_port()
    cfg = config(mode, port, bport, work, certs)
    proc = subprocess.Popen(
        argv(cfg), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, 120)
        load(port, warmup + n, ROUND_TRIPS[mode], certs.client if tls and certs else None)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lsock.close()


def count(
    src: Path | None, mode: str, n: int, work: Path, certs: Certs | None, warmup: int = 0
) -> dict[str, int]:
    """Instructions of one relay run with `warmup` + `n` connections, in all ("total")
    and per shared object (`by_object`): snirelay from `src`, or HAProxy when `src` is
    None."""
    out = work / f"cg.{mode}.{n}.{'haproxy' if src is None else src.parent.name}.out"
    if src is None:
        cmd, env, config = [shutil.which("haproxy") or "haproxy", "-db", "-f"], None, haproxy_config
    else:
        cmd, env = [sys.executable, "-m", "snirelay", "-c"], dict(os.environ, PYTHONPATH=str(src))
        config = snirelay_config
    run_loaded(
        lambda cfg: ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd, str(cfg)],
        mode,
        n,
        work,
        certs,
        env=env,
        config=config,
        warmup=warmup,
    )
    return by_object(out)


# The shared objects a figure is split into (the rest is "other": the kernel's vdso,
# valgrind's preload, Python's extension modules)
OBJECTS = {
    "libpython": "libpython",
    "haproxy": "/haproxy",
    "libcrypto": "libcrypto",
    "libssl": "libssl",
    "libc": "/libc.so",
}


def by_object(path: Path) -> dict[str, int]:
    """Self instructions per shared object of a callgrind output, and "total".

    The format: `ob=` names the object of the cost lines that follow (`(id) name` the
    first time it or a `cob=` line names it, `(id)` after); a line after `calls=` is the inclusive cost of a call,
    not the caller's own, and is skipped."""
    names: dict[str, str] = {}
    totals: dict[str, int] = {}
    current = "other"
    skip = False
    total = None
    for line in path.read_text(errors="replace").splitlines():
        if skip:
            skip = False
            continue
        if line.startswith(("ob=", "cob=")):  # a name is given once, in either
            ref, _, name = line.partition("=")[2].partition(" ")
            if name:
                names[ref] = name
            if line[0] == "o":
                name = names.get(ref, ref)
                current = next((k for k, v in OBJECTS.items() if v in name), "other")
        elif line.startswith("calls="):
            skip = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) > 1:
                totals[current] = totals.get(current, 0) + int(parts[1])
        elif line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    if total is None:
        raise SystemExit(f"no instruction count in {path}")
    totals["total"] = total
    return totals


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
    ap.add_argument("--peer", choices=("haproxy",), help="also count HAProxy under the same load")
    ap.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="W",
        help="connections before the counted ones, in both runs (their cost cancels out:"
        " the figure is then the steady state, without the first connections' one-time"
        " work, such as the interpreter's first pass through a code path)",
    )
    ap.add_argument(
        "--modes", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}"
    )
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in CONFIGS]:
        ap.error(f"unknown mode(s): {', '.join(unknown)}")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snirelay-instr-") as tmp:
        work = Path(tmp)
        builds: list[tuple[str, Path | None]] = [("this tree", REPO / "src")]
        if args.baseline:
            builds.insert(0, (f"snirelay@{args.baseline}", unpack(args.baseline, work)))
        if args.peer:
            if shutil.which("haproxy") is None:
                print("haproxy is not installed (apt-get install haproxy)", file=sys.stderr)
                return 2
            builds.append((args.peer, None))
        certs = Certs(work) if any(m in TLS_MODES for m in modes) else None
        results: dict[tuple[str, str], float] = {}
        parts: dict[tuple[str, str], dict[str, float]] = {}
        for mode in modes:
            for name, src in builds:
                idle = count(src, mode, 0, work, certs, args.warmup)
                busy = count(src, mode, args.connections, work, certs, args.warmup)
                per = (busy["total"] - idle["total"]) / args.connections
                results[(name, mode)] = per
                parts[(name, mode)] = {
                    k: (busy.get(k, 0) - idle.get(k, 0)) / args.connections
                    for k in (*OBJECTS, "other")
                }
                split = ", ".join(f"{k} {v:,.0f}" for k, v in parts[(name, mode)].items() if v)
                print(f"{name:24} {mode:11} {per:10,.0f} instructions per connection ({split})")
        for name, _ in builds:
            for many_rt, (one_rt, what) in TRIP_MODES.items():
                if (name, many_rt) not in results or (name, one_rt) not in results:
                    continue
                extra = ROUND_TRIPS[many_rt] - ROUND_TRIPS[one_rt]
                trip = (results[(name, many_rt)] - results[(name, one_rt)]) / extra
                many, one = parts[(name, many_rt)], parts[(name, one_rt)]
                split = ", ".join(
                    f"{k} {(many[k] - one[k]) / extra:,.0f}" for k in many if many[k] or one[k]
                )
                print(
                    f"{name:24} one round trip through {what}: {trip:,.0f} instructions ({split})"
                )
        refs = [builds[0][0]] if args.baseline else []
        refs += [args.peer] if args.peer else []
        for ref in refs:
            for mode in modes:
                ratio = results[("this tree", mode)] / results[(ref, mode)]
                print(f"{mode}: this tree / {ref} = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
