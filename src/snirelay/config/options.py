"""Command-line options as data (`CliOptions`) and what they override.

How it works
------------
The CLI fills a `CliOptions` (None = flag not given). `cli_network`, `cli_log_dns` and
`cli_endpoint` turn the given flags into "keys set" dicts that the loader applies on top
of every level (command line > route > endpoint > global), checking ranges the same way
the file loader does, with the flag as the place: "--send-proxy-version: must be <= 2".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snirelay.config.addr import parse_nameserver
from snirelay.config.model import DNS_MODES, DNS_PROTOCOLS, LOG_LEVELS, ConfigError
from snirelay.config.table import check_choice, check_range, check_seconds

LOG_FORMATS = ("text", "json")


@dataclass
class CliOptions:
    """Every realm command-line flag plus snirelay's; None (or False) = not given."""

    listen: str | None = None  # -l
    remote: str | None = None  # -r
    through: str | None = None  # -x
    interface: str | None = None  # -i
    listen_interface: str | None = None  # -e
    listen_transport: str | None = None  # -a
    remote_transport: str | None = None  # -b
    udp: bool | None = None  # -u
    ntcp: bool | None = None  # -t
    ipv6: bool | None = None  # -6
    mptcp: bool | None = None  # -m
    daemon: bool | None = None  # -d
    nofile: int | None = None  # -n
    pipe_page: int | None = None  # -p
    fast_open: bool | None = None  # -f (accepted, no effect)
    zero_copy: bool | None = None  # -z (accepted, no effect)
    log_level: str | None = None
    log_output: str | None = None
    log_format: str | None = None  # snirelay
    dns_mode: str | None = None
    dns_protocol: str | None = None
    dns_servers: str | None = None  # "a:53,b:53"
    dns_min_ttl: int | None = None
    dns_max_ttl: int | None = None
    dns_cache_size: int | None = None
    send_proxy: bool | None = None
    send_proxy_version: int | None = None
    accept_proxy: bool | None = None
    accept_proxy_timeout: float | None = None
    tcp_timeout: float | None = None
    udp_timeout: float | None = None
    tcp_keepalive: float | None = None
    tcp_keepalive_probe: int | None = None
    tcp_idle_timeout: float | None = None  # snirelay
    workers: int | None = None  # snirelay, -w


_CLI_NETWORK = {
    "udp": ("use_udp",),
    "ntcp": ("no_tcp",),
    "ipv6": ("ipv6_only",),
    "mptcp": ("send_mptcp", "accept_mptcp"),
    "send_proxy": ("send_proxy",),
    "send_proxy_version": ("send_proxy_version",),
    "accept_proxy": ("accept_proxy",),
    "accept_proxy_timeout": ("accept_proxy_timeout",),
    "tcp_timeout": ("tcp_timeout",),
    "udp_timeout": ("udp_timeout",),
    "tcp_keepalive": ("tcp_keepalive",),
    "tcp_keepalive_probe": ("tcp_keepalive_probe",),
    "tcp_idle_timeout": ("tcp_idle_timeout",),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_network(cli: CliOptions) -> dict[str, Any]:
    """NetworkConfig keys set on the command line, range-checked."""
    out: dict[str, Any] = {}
    for opt, keys in _CLI_NETWORK.items():
        value = getattr(cli, opt)
        if value is None:
            continue
        if isinstance(value, bool):
            pass
        elif opt == "send_proxy_version":
            check_range(_flag(opt), value, 1, 2)
        elif isinstance(value, int) and opt == "tcp_keepalive_probe":
            check_range(_flag(opt), value, 0)
        else:
            check_seconds(_flag(opt), value)
            value = float(value)
        for key in keys:
            out[key] = value
    return out


def cli_log_dns(cli: CliOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    log: dict[str, Any] = {}
    if cli.log_level is not None:
        log["level"] = check_choice("--log-level", cli.log_level, LOG_LEVELS)
    if cli.log_output is not None:
        log["output"] = cli.log_output
    if cli.log_format is not None:
        log["format"] = check_choice("--log-format", cli.log_format, LOG_FORMATS)
    dns: dict[str, Any] = {}
    if cli.dns_mode is not None:
        dns["mode"] = check_choice("--dns-mode", cli.dns_mode, DNS_MODES)
    if cli.dns_protocol is not None:
        dns["protocol"] = check_choice("--dns-protocol", cli.dns_protocol, DNS_PROTOCOLS)
    if cli.dns_servers is not None:
        items = [s.strip() for s in cli.dns_servers.split(",") if s.strip()]
        dns["nameservers"] = tuple(parse_nameserver(s, "--dns-servers") for s in items)
    for key in ("min_ttl", "max_ttl", "cache_size"):
        value = getattr(cli, f"dns_{key}")
        if value is not None:
            check_range(_flag(f"dns_{key}"), value, 0)
            dns[key] = value
    return log, dns


CLI_ENDPOINT_FLAGS = {
    "listen": "-l/--listen",
    "remote": "-r/--remote",
    "through": "-x/--through",
    "interface": "-i/--interface",
    "listen_interface": "-e/--listen-interface",
    "listen_transport": "-a/--listen-transport",
    "remote_transport": "-b/--remote-transport",
}


def cli_endpoint(cli: CliOptions) -> dict[str, Any] | None:
    """The raw endpoint table of ``-l``/``-r`` (with -x -i -e -a -b), or None.

    The endpoint flags belong to that one endpoint, as in realm; given without -l/-r
    they are an error rather than silently ignored."""
    given = {k: getattr(cli, k) for k in CLI_ENDPOINT_FLAGS if getattr(cli, k) is not None}
    if not given:
        return None
    if "listen" not in given and "remote" not in given:
        flag = CLI_ENDPOINT_FLAGS[next(iter(given))]
        raise ConfigError(flag, "applies to the command-line endpoint: give -l and -r too")
    for key, other in (("listen", "remote"), ("remote", "listen")):
        if key not in given:
            raise ConfigError(
                CLI_ENDPOINT_FLAGS[key],
                f"missing ({CLI_ENDPOINT_FLAGS[other]} needs {CLI_ENDPOINT_FLAGS[key]} too)",
            )
    return given
