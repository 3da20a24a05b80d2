"""The relays under test, each able to start for a mode on a given listen port.

How it works: a ``Relay`` knows whether its program is installed, its version, and
how to start one instance (one worker / one thread) for a mode:

- ``forward``: everything arriving on the listen port goes to one backend port;
- ``sni``: TLS passthrough, the backend chosen by the ClientHello's server name
  (``routes`` maps names to ports; the first route is also the default).

Modes still to come (TLS termination, re-origination, UDP) become new mode names in
``modes`` and a branch in ``argv_for``; scenarios declare which mode they need, and
relays that lack it are reported as "not applicable" instead of failing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from common import LOOPBACK, free_port, run_text, start, wait_port, which

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


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
    name: str
    label: str
    modes: frozenset[str]
    tool: str | None = None  # executable to look for; None = always available
    extra: dict[str, str] = field(default_factory=dict)

    def missing(self) -> str | None:
        """Why this relay cannot run here, or None."""
        if self.name == "nginx" and not os.path.exists(NGINX_MODULE):
            return f"nginx stream module missing ({NGINX_MODULE}; apt install libnginx-mod-stream)"
        if self.tool is not None and which(self.tool) is None:
            return f"{self.tool} not installed"
        if self.name == "snirelay":
            probe = run_text([sys.executable, "-m", "snirelay", "--help"], timeout=20)
            if "usage" not in probe.lower():
                return "snirelay not runnable (python -m snirelay --help failed)"
        return None

    def version(self) -> str:
        if self.name == "direct":
            return "-"
        if self.name == "snirelay":
            out = run_text(
                [sys.executable, "-c", "import snirelay; print(snirelay.__version__)"], timeout=20
            )
            return f"snirelay {out.strip() or '?'} (Python {sys.version.split()[0]})"
        tool = which(self.tool or self.name) or self.name
        flag = {"haproxy": "-v", "nginx": "-v", "socat": "-V"}[self.name]
        lines = run_text([tool, flag]).strip().splitlines()
        for line in lines:
            if "version" in line.lower():
                return line.strip()
        return lines[0] if lines else "?"

    def start(
        self, mode: str, backend: int | Mapping[str, int], workdir: str, tag: str
    ) -> Instance:
        """Start an instance for ``mode``; ``backend`` is a port or {server_name: port}."""
        if self.name == "direct":
            port = backend if isinstance(backend, int) else next(iter(backend.values()))
            return Instance(self, port, None)
        port = free_port()
        argv = self.argv_for(mode, port, backend, workdir, tag)
        proc = start(argv, f"{workdir}/{self.name}-{tag}.log")
        wait_port(port, timeout=20, proc=proc)
        return Instance(self, port, proc)

    def argv_for(
        self, mode: str, port: int, backend: int | Mapping[str, int], workdir: str, tag: str
    ) -> list[str]:
        routes = {"": backend} if isinstance(backend, int) else dict(backend)
        default = next(iter(routes.values()))
        conf = f"{workdir}/{self.name}-{tag}.conf"
        if self.name == "snirelay":
            if mode == "forward":
                return [
                    sys.executable, "-m", "snirelay",
                    "-l", f"{LOOPBACK}:{port}", "-r", f"{LOOPBACK}:{default}",
                    "--log-level", "off",
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
        if self.name == "haproxy":
            _write(conf, _haproxy_conf(mode, port, routes, default))
            return [which("haproxy") or "haproxy", "-db", "-f", conf]
        if self.name == "nginx":
            _write(conf, _nginx_conf(mode, port, routes, default, workdir, tag))
            err = f"{workdir}/nginx-{tag}.err"
            return [which("nginx") or "nginx", "-e", err, "-c", conf, "-p", workdir]
        if self.name == "socat":
            return [
                which("socat") or "socat",
                f"TCP-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr,backlog=4096",
                f"TCP:{LOOPBACK}:{default}",
            ]
        raise ValueError(f"{self.name}: mode {mode} not supported")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _haproxy_conf(mode: str, port: int, routes: Mapping[str, int], default: int) -> str:
    head = f"""global
  nbthread 1
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend fe
  bind {LOOPBACK}:{port}
  maxconn 9000
"""
    if mode == "forward":
        return head + f"  default_backend be0\nbackend be0\n  server s0 {LOOPBACK}:{default}\n"
    body = "  tcp-request inspect-delay 10s\n  tcp-request content accept if { req.ssl_hello_type 1 }\n"
    backs = ""
    for i, (name, p) in enumerate(routes.items()):
        body += f"  use_backend be{i} if {{ req.ssl_sni -i {name} }}\n"
        backs += f"backend be{i}\n  server s{i} {LOOPBACK}:{p}\n"
    return head + body + "  default_backend be0\n" + backs


def _nginx_conf(
    mode: str, port: int, routes: Mapping[str, int], default: int, workdir: str, tag: str
) -> str:
    if mode == "forward":
        server = f"  server {{ listen {LOOPBACK}:{port} backlog=4096; proxy_pass {LOOPBACK}:{default}; }}"
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


RELAYS: tuple[Relay, ...] = (
    Relay("direct", "direct, no relay", frozenset({"forward", "sni"})),
    Relay("snirelay", "snirelay (1 worker)", frozenset({"forward", "sni"})),
    Relay("haproxy", "HAProxy (tcp mode, 1 thread)", frozenset({"forward", "sni"}), "haproxy"),
    Relay("nginx", "nginx stream (1 worker)", frozenset({"forward", "sni"}), "nginx"),
    Relay("socat", "socat (fork per connection)", frozenset({"forward"}), "socat"),
)
