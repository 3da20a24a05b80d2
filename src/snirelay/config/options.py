"""Command-line options as data (`CliOptions`) and what they override.

How it works
------------
The CLI fills a `CliOptions` (None = flag not given). The network flags are not fields
of their own: `CliOptions.network` holds the network options given on the command line
by option name, and `config.network.cli_network` checks them (the flags and their
checks are made from `NetworkConfig`'s declarations). `cli_log_dns` and `cli_endpoint`
turn the other flags into "keys set" dicts. The loader applies them all on top of every
level (command line > route > endpoint > global), checking ranges the same way the file
loader does, with the flag as the place: "--log-level: unknown value ...".

The endpoint flags (``-l -r -x -i -e -a -b``) make one endpoint of their own. realm
ignores them when the config comes from a file (``-c``); the CLI does the same by
calling `without_endpoint`, which clears them and says which were given (grouped as
`ENDPOINT_FLAG_GROUPS`) so that each can be warned about. `load_config` itself still
adds the flags' endpoint to a file's: a caller of the library asks for what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from snirelay.config.addr import parse_nameserver
from snirelay.config.model import DNS_MODES, DNS_PROTOCOLS, LOG_LEVELS, ConfigError
from snirelay.config.table import check_choice, check_range

LOG_FORMATS = ("text", "json")
# a TTL is at most 2^31 - 1 seconds (RFC 2181 8); a cache past ten million names is a typo
DNS_MAXIMA = {"min_ttl": 2**31 - 1, "max_ttl": 2**31 - 1, "cache_size": 10_000_000}


@dataclass
class CliOptions:
    """Every realm command-line flag plus snirelay's; None = not given."""

    listen: str | None = None  # -l
    remote: str | None = None  # -r
    through: str | None = None  # -x
    interface: str | None = None  # -i
    listen_interface: str | None = None  # -e
    listen_transport: str | None = None  # -a
    remote_transport: str | None = None  # -b
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
    workers: int | None = None  # snirelay, -w
    pre_conn_hook: str | None = None  # -j
    # network options given as flags, by option name ("-m" sets send_mptcp and
    # accept_mptcp); the flags are made from NetworkConfig (see config.network)
    network: dict[str, Any] = field(default_factory=dict)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
    for key, top in DNS_MAXIMA.items():
        value = getattr(cli, f"dns_{key}")
        if value is not None:
            check_range(_flag(f"dns_{key}"), value, 0, top)
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


# how the ignored endpoint flags are named in a warning: -l and -r together (they make
# the endpoint), each option of that endpoint on its own
ENDPOINT_FLAG_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("-l/-r", ("listen", "remote")),
    *((CLI_ENDPOINT_FLAGS[k], (k,)) for k in CLI_ENDPOINT_FLAGS if k not in ("listen", "remote")),
)


def without_endpoint(cli: CliOptions) -> tuple[CliOptions, list[str]]:
    """`cli` with the endpoint flags cleared, and the groups of them that were given
    (``["-l/-r", "-x/--through"]``), in `ENDPOINT_FLAG_GROUPS` order: for a config read
    from a file, where realm ignores them."""
    given = [
        name
        for name, keys in ENDPOINT_FLAG_GROUPS
        if any(getattr(cli, k) is not None for k in keys)
    ]
    cleared: dict[str, Any] = dict.fromkeys(CLI_ENDPOINT_FLAGS)
    return replace(cli, **cleared), given
