"""The relays under test, each able to start for a mode on a given listen port.

How it works: a ``Relay`` knows whether its program is installed, its version, and
how to start one instance (one worker / one thread) for a mode:

- ``forward``: everything arriving on the listen port goes to one backend port;
- ``sni``: TLS passthrough, the backend chosen by the ClientHello's server name
  (``routes`` maps names to ports; the first route is also the default).

- ``terminate``: TLS ends at the relay (the run's ECDSA P-256 certificate for
  ``RELAY_NAME``, session tickets off so every connection is a full handshake), plain
  bytes go to one backend port (the nginx HTTP backend);
- ``reoriginate``: the same, and the relay opens a new TLS connection to the backend
  (``routes`` is ``{server_name: port}`` with one entry: the backend's name, sent as SNI
  and verified against the run's CA).

- ``tunnel``: two snirelays chained, client -> A -> B -> one backend port, each one
  worker, on loopback. ``hop`` says what runs between A and B: ``tcp`` (two plain
  endpoints) or ``ws`` (A ``remote_transport = TUNNEL_WS``, B ``listen_transport =
  TUNNEL_WS``: the stream as WebSocket binary frames). Only the two chain relays have
  this mode. They run as one process tree, like nginx's master and worker: ``sh``
  starts B in the background and execs A, so B is A's child and the tree's CPU,
  memory and descriptors (and the stop by process group) cover A and B together.

- ``udp``: UDP datagrams and TCP connections on the same listen port to the same
  backend port (iperf3 ``-u`` opens its control connection over TCP, then sends its
  datagrams to that port): snirelay ``-u`` (an endpoint with ``use_udp`` relays both),
  nginx one stream ``server`` with ``listen ... udp`` beside the TCP ``listen``
  (``proxy_buffer_size 64k``: a datagram from the backend larger than that buffer would
  be cut), socat two processes, ``UDP4-LISTEN`` (``fork``: a child per client address,
  ``-T 30``, ``-b 65536`` so a datagram up to that size passes whole; its default is
  8,192) with the TCP one as its child, as the chains run. HAProxy 2.6 and sniproxy
  have no UDP.

sniproxy can only route (TLS or HTTP by name): it has ``sni`` and no ``forward``;
sniproxy, socat and the direct path have neither TLS mode.
Every relay runs in the foreground as our child, with a config written to the work
directory, on loopback, one process/worker/thread where the program lets us choose.

Modes still to come become new mode names in
``modes`` and a branch in ``argv_for``; scenarios declare which mode they need, and
relays that lack it are reported as "not applicable" instead of failing.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from backends import RelayTLS, relay_tls_files
from common import LOOPBACK, free_port, run_text, start, wait_port, which

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
TLS_MODES = frozenset({"terminate", "reoriginate"})
TUNNEL = "tunnel"  # two snirelays chained (see Relay.hop)
UDP = "udp"  # UDP and TCP on one port to one backend port
TUNNEL_WS = "ws;host=tunnel.bench.test;path=/tunnel"  # the A -> B transport of the ws chain


@dataclass
class Instance:
    """One running relay (proc is None for the direct path)."""

    relay: Relay
    port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


@dataclass
class Relay:
    """One relay under test.

    ``kind`` says how to start it (``snirelay``, ``haproxy``, ``nginx``, ``socat``,
    ``sniproxy``, ``direct``; the name by default). A ``snirelay`` relay runs
    ``python -m snirelay`` from the venv's interpreter with ``PYTHONPATH`` set to
    ``src`` (this checkout's src/ by default; a baseline build extracted from another
    git ref is the same kind with another ``src`` and name).
    """

    name: str
    label: str
    modes: frozenset[str]
    tool: str | None = None  # executable to look for; None = always available
    kind: str = ""
    src: str = os.path.join(REPO, "src")  # snirelay kind only: the source tree to run
    hop: str = ""  # mode tunnel only: "tcp" or "ws" between the two snirelays

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = self.name

    def env(self) -> dict[str, str] | None:
        """The environment to start it with (None: inherit ours)."""
        if self.kind != "snirelay":
            return None
        return {**os.environ, "PYTHONPATH": self.src}

    def missing(self) -> str | None:
        """Why this relay cannot run here, or None."""
        if self.kind == "nginx" and not os.path.exists(NGINX_MODULE):
            return f"nginx stream module missing ({NGINX_MODULE}; apt install libnginx-mod-stream)"
        if self.tool is not None and which(self.tool) is None:
            return f"{self.tool} not installed"
        if self.kind == "snirelay":
            probe = run_text(
                [sys.executable, "-m", "snirelay", "--help"], timeout=20, env=self.env()
            )
            if "usage" not in probe.lower():
                return f"snirelay not runnable from {self.src} (python -m snirelay --help failed)"
            where = run_text(
                [sys.executable, "-c", "import snirelay; print(snirelay.__file__)"],
                timeout=20,
                env=self.env(),
            ).strip()
            if not where.startswith(self.src + os.sep):
                return f"snirelay imported from {where!r}, not from {self.src}"
        return None

    def version(self) -> str:
        if self.kind == "direct":
            return "-"
        if self.kind == "snirelay":
            out = run_text(
                [sys.executable, "-c", "import snirelay; print(snirelay.__version__)"],
                timeout=20,
                env=self.env(),
            )
            return f"snirelay {out.strip() or '?'} (Python {sys.version.split()[0]})"
        tool = which(self.tool or self.kind) or self.kind
        flag = {"haproxy": "-v", "nginx": "-v", "socat": "-V", "sniproxy": "-V"}[self.kind]
        lines = run_text([tool, flag]).strip().splitlines()
        for line in lines:
            if "version" in line.lower():
                return line.strip()
        return lines[0].strip() if lines else "?"  # sniproxy: "sniproxy 0.6.0"

    def start(
        self, mode: str, backend: int | Mapping[str, int], workdir: str, tag: str
    ) -> Instance:
        """Start an instance for ``mode``; ``backend`` is a port or {server_name: port}."""
        if self.kind == "direct":
            port = backend if isinstance(backend, int) else next(iter(backend.values()))
            return Instance(self, port, None)
        port = free_port()
        inner = free_port() if mode == TUNNEL else None  # B's listen port
        if inner is None:
            argv = self.argv_for(mode, port, backend, workdir, tag)
        else:
            argv = self.chain_argv(port, inner, backend, workdir, tag)
        proc = start(argv, f"{workdir}/{self.file_tag}-{tag}.log", env=self.env())
        if inner is not None:
            wait_port(inner, timeout=20, proc=proc)
        wait_port(port, timeout=20, proc=proc)
        return Instance(self, port, proc)

    def chain_argv(
        self, port: int, inner: int, backend: int | Mapping[str, int], workdir: str, tag: str
    ) -> list[str]:
        """Two snirelays, A on ``port`` -> B on ``inner`` -> the backend (mode tunnel):
        ``sh -c 'B & exec A'``, one log for both (level error)."""
        if self.kind != "snirelay" or self.hop not in ("tcp", "ws"):
            raise ValueError(f"{self.name}: mode {TUNNEL} not supported")
        default = backend if isinstance(backend, int) else next(iter(backend.values()))
        ws = self.hop == "ws"
        argv = []
        for side, listen, remote in (("b", inner, default), ("a", port, inner)):
            conf = f"{workdir}/{self.file_tag}-{tag}-{side}.toml"
            lines = [
                '[log]\nlevel = "error"\n',
                "[[endpoints]]",
                f'listen = "{LOOPBACK}:{listen}"',
                f'remote = "{LOOPBACK}:{remote}"',
            ]
            if ws:
                key = "listen_transport" if side == "b" else "remote_transport"
                lines.append(f'{key} = "{TUNNEL_WS}"')
            _write(conf, "\n".join(lines) + "\n")
            argv.append(shlex.join([sys.executable, "-m", "snirelay", "-c", conf]))
        return ["/bin/sh", "-c", f"{argv[0]} & exec {argv[1]}"]

    @property
    def file_tag(self) -> str:
        """The name, safe in a file name (a baseline's ref may hold '/' or '~')."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)

    def argv_for(
        self, mode: str, port: int, backend: int | Mapping[str, int], workdir: str, tag: str
    ) -> list[str]:
        if mode not in self.modes:
            raise ValueError(f"{self.name}: mode {mode} not supported")
        routes = {"": backend} if isinstance(backend, int) else dict(backend)
        default = next(iter(routes.values()))
        conf = f"{workdir}/{self.file_tag}-{tag}.conf"
        tls = relay_tls_files(workdir) if mode in TLS_MODES else None
        if self.kind == "snirelay" and tls is not None:
            _write(conf.replace(".conf", ".toml"), _snirelay_tls_toml(mode, port, routes, tls))
            return [sys.executable, "-m", "snirelay", "-c", conf.replace(".conf", ".toml")]
        if self.kind == "snirelay":
            if mode in ("forward", UDP):
                return [
                    sys.executable, "-m", "snirelay",
                    "-l", f"{LOOPBACK}:{port}", "-r", f"{LOOPBACK}:{default}",
                    "--log-level", "off", *(["-u"] if mode == UDP else []),
                ]  # fmt: skip
            conf = conf.replace(".conf", ".toml")
            lines = [
                '[log]\nlevel = "off"\n',
                f'[[endpoints]]\nlisten = "{LOOPBACK}:{port}"\nremote = "{LOOPBACK}:{default}"\n',
            ]
            for name, p in routes.items():
                lines.append(
                    f'  [[endpoints.routes]]\n  server_names = ["{name}"]\n'
                    f'  remote = "{LOOPBACK}:{p}"\n'
                )
            _write(conf, "\n".join(lines))
            return [sys.executable, "-m", "snirelay", "-c", conf]
        if self.kind == "haproxy":
            _write(conf, _haproxy_conf(mode, port, routes, default, tls))
            return [which("haproxy") or "haproxy", "-db", "-f", conf]
        if self.kind == "nginx":
            _write(conf, _nginx_conf(mode, port, routes, default, workdir, tag, tls))
            err = f"{workdir}/nginx-{tag}.err"
            return [which("nginx") or "nginx", "-e", err, "-c", conf, "-p", workdir]
        if self.kind == "socat" and mode == UDP:
            socat = which("socat") or "socat"
            tcp = shlex.join([
                socat, f"TCP-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr,backlog=4096",
                f"TCP:{LOOPBACK}:{default}",
            ])  # fmt: skip
            udp = shlex.join([
                socat, "-T", "30", "-b", "65536",
                f"UDP4-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr", f"UDP4:{LOOPBACK}:{default}",
            ])  # fmt: skip
            return ["/bin/sh", "-c", f"{tcp} & exec {udp}"]
        if self.kind == "socat":
            return [
                which("socat") or "socat",
                f"TCP-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr,backlog=4096",
                f"TCP:{LOOPBACK}:{default}",
            ]
        if self.kind == "sniproxy":
            _write(conf, _sniproxy_conf(port, routes, default, workdir, tag))
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            # -f: foreground (stays our child, stopped by PID); -n: keep our descriptor limit
            return [which("sniproxy") or "sniproxy", "-f", "-c", conf, "-n", str(nofile)]
        raise ValueError(f"{self.name}: mode {mode} not supported")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _snirelay_tls_toml(mode: str, port: int, routes: Mapping[str, int], tls: RelayTLS) -> str:
    """One endpoint terminating TLS (tickets off), re-originating for ``reoriginate``."""
    (name, backend), *_ = routes.items()
    lines = [
        '[log]\nlevel = "off"\n',
        "[[endpoints]]",
        f'listen = "{LOOPBACK}:{port}"',
        f'remote = "{LOOPBACK}:{backend}"',
        f'listen_transport = "tls;cert={tls.cert};key={tls.key}"',
    ]
    if mode == "reoriginate":
        lines.append(f'remote_transport = "tls;sni={name};ca={tls.ca}"')
    lines.append("network = { tls_session_tickets = false }")
    return "\n".join(lines) + "\n"


def _haproxy_conf(
    mode: str, port: int, routes: Mapping[str, int], default: int, tls: RelayTLS | None = None
) -> str:
    bind = "" if tls is None else f" ssl crt {tls.combined} no-tls-tickets"
    no_tickets = "" if tls is None else "  ssl-default-bind-options no-tls-tickets\n"
    head = f"""global
  nbthread 1
  maxconn 9000
{no_tickets}defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend fe
  bind {LOOPBACK}:{port}{bind}
  maxconn 9000
"""
    if mode == "terminate":
        return head + f"  default_backend be0\nbackend be0\n  server s0 {LOOPBACK}:{default}\n"
    if mode == "reoriginate":
        assert tls is not None
        name = next(iter(routes))
        return head + (
            f"  default_backend be0\nbackend be0\n  server s0 {LOOPBACK}:{default}"
            f" ssl verify required ca-file {tls.ca} sni str({name})\n"
        )
    if mode == "forward":
        return head + f"  default_backend be0\nbackend be0\n  server s0 {LOOPBACK}:{default}\n"
    body = "  tcp-request inspect-delay 10s\n  tcp-request content accept if { req.ssl_hello_type 1 }\n"
    backs = ""
    for i, (name, p) in enumerate(routes.items()):
        body += f"  use_backend be{i} if {{ req.ssl_sni -i {name} }}\n"
        backs += f"backend be{i}\n  server s{i} {LOOPBACK}:{p}\n"
    return head + body + "  default_backend be0\n" + backs


def _nginx_conf(
    mode: str,
    port: int,
    routes: Mapping[str, int],
    default: int,
    workdir: str,
    tag: str,
    tls: RelayTLS | None = None,
) -> str:
    if tls is not None:
        upstream = ""
        if mode == "reoriginate":
            name = next(iter(routes))
            upstream = (
                f" proxy_ssl on; proxy_ssl_name {name}; proxy_ssl_server_name on;"
                f" proxy_ssl_verify on; proxy_ssl_trusted_certificate {tls.ca};"
            )
        server = (
            f"  server {{ listen {LOOPBACK}:{port} ssl backlog=4096;"
            f" ssl_certificate {tls.cert}; ssl_certificate_key {tls.key};"
            f" ssl_session_tickets off; ssl_session_cache off;{upstream}"
            f" proxy_pass {LOOPBACK}:{default}; }}"
        )
    elif mode == "forward":
        server = f"  server {{ listen {LOOPBACK}:{port} backlog=4096; proxy_pass {LOOPBACK}:{default}; }}"
    elif mode == UDP:
        server = (
            f"  server {{ listen {LOOPBACK}:{port} backlog=4096; listen {LOOPBACK}:{port} udp;"
            f" proxy_buffer_size 64k; proxy_pass {LOOPBACK}:{default}; }}"
        )
    else:
        entries = "".join(f"    {n} {LOOPBACK}:{p};\n" for n, p in routes.items())
        server = (
            f"  map $ssl_preread_server_name $up {{\n{entries}    default {LOOPBACK}:{default};\n  }}\n"
            f"  server {{ listen {LOOPBACK}:{port} backlog=4096; ssl_preread on; proxy_pass $up; }}"
        )
    return f"""load_module {NGINX_MODULE};
worker_processes 1;
daemon off;
pid {workdir}/nginx-{tag}.pid;
error_log {workdir}/nginx-{tag}.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; multi_accept on; }}
stream {{
  proxy_timeout 1h;
  proxy_half_close on;
{server}
}}
"""


def _sniproxy_conf(
    port: int, routes: Mapping[str, int], default: int, workdir: str, tag: str
) -> str:
    """A TLS listener whose table maps each exact name to its backend (PCRE, anchored).

    ``fallback`` plays the part of the other relays' default route (no SNI, unknown
    name). No access log, as with the other relays. ``user`` is whoever runs the bench:
    as root, sniproxy would otherwise drop to ``daemon``, which cannot write the
    0700 work directory.
    """
    table = "".join(
        f"    ^{re.escape(name)}$ {LOOPBACK}:{p}\n" for name, p in routes.items() if name
    )
    return f"""user {pwd.getpwuid(os.getuid()).pw_name}
pidfile {workdir}/sniproxy-{tag}.pid
error_log {{
    filename {workdir}/sniproxy-{tag}.err
    priority notice
}}
listener {LOOPBACK}:{port} {{
    protocol tls
    table routes
    fallback {LOOPBACK}:{default}
}}
table routes {{
{table}}}
"""


def baseline(ref: str, src: str) -> Relay:
    """snirelay as of another git ref, its src/ extracted to ``src`` (see run.py); mode
    ``udp`` too when that tree has UDP relaying (``snirelay/net/udp.py``)."""
    udp = os.path.exists(os.path.join(src, "snirelay", "net", "udp.py"))
    return Relay(
        f"snirelay@{ref}",
        f"snirelay@{ref} (1 worker, baseline)",
        frozenset({"forward", "sni", *([UDP] if udp else [])}),
        kind="snirelay",
        src=src,
    )


RELAYS: tuple[Relay, ...] = (
    Relay("direct", "direct, no relay", frozenset({"forward", "sni", UDP})),
    Relay("snirelay", "snirelay (1 worker)", frozenset({"forward", "sni", UDP}) | TLS_MODES),
    Relay(
        "haproxy",
        "HAProxy (tcp mode, 1 thread)",
        frozenset({"forward", "sni"}) | TLS_MODES,
        "haproxy",
    ),
    Relay(
        "nginx", "nginx stream (1 worker)", frozenset({"forward", "sni", UDP}) | TLS_MODES, "nginx"
    ),
    Relay("sniproxy", "sniproxy (SNI only)", frozenset({"sni"}), "sniproxy"),
    Relay("socat", "socat (fork per connection)", frozenset({"forward", UDP}), "socat"),
    Relay(
        "chain-tcp",
        "two snirelays, plain TCP between",
        frozenset({TUNNEL}),
        kind="snirelay",
        hop="tcp",
    ),
    Relay(
        "chain-ws",
        "two snirelays, WebSocket between",
        frozenset({TUNNEL}),
        kind="snirelay",
        hop="ws",
    ),
)
