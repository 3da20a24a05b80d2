"""Load a configuration: files (TOML, JSON, legacy v1 JSON), directories and command-line
flags, merged into one frozen `Config`.

How it works
------------
1. `read_documents(path)` gives ``(label, dict)`` pairs: one for a file (label ""), one
   per ``*.toml``/``*.json`` for a directory (sorted, dot-files skipped; the label is the
   file name). The format is detected by content: JSON starts with ``{``, anything else
   is TOML. A legacy v1 document is converted (`legacy.convert_legacy`).
2. Each document's global sections ([log], [dns], [network], [api], ``workers``,
   ``drain_timeout``) are type-checked into "keys set" dicts and merged; in a directory,
   two files setting the same key is an error naming both files.
3. Command-line flags (`CliOptions`) override the merged globals (log, dns, network).
4. Endpoints are parsed (`endpoints.parse_endpoint`) with the global network from the
   files and the command-line network overrides, so precedence is
   command line > route > endpoint > global. ``-l``/``-r`` add one endpoint.

Places: ``endpoints[i]`` for a file, ``NAME.toml:endpoints[i]`` in a directory,
``command line`` for the ``-l``/``-r`` endpoint.

Error handling: every problem raises `ConfigError` with a one-line message that names the
place (file, key path, or flag). Nothing else escapes for bad input.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from snirelay.config.addr import parse_addr, parse_nameserver
from snirelay.config.endpoints import parse_endpoint
from snirelay.config.legacy import convert_legacy, is_legacy
from snirelay.config.model import (
    DNS_MODES,
    DNS_PROTOCOLS,
    LOG_LEVELS,
    ApiConfig,
    Config,
    ConfigError,
    DnsConfig,
    Endpoint,
    LogConfig,
    NetworkConfig,
)
from snirelay.config.network import NETWORK_KEYS, RETIRED, cli_network, parse_network
from snirelay.config.notes import Errors, collecting, warn
from snirelay.config.options import (
    CLI_ENDPOINT_FLAGS,
    LOG_FORMATS,
    CliOptions,
    cli_endpoint,
    cli_log_dns,
)
from snirelay.config.table import Table, check_range, type_name

TOP_KEYS = (
    "log",
    "dns",
    "network",
    "endpoints",
    "api",
    "workers",
    "drain_timeout",
    "pre_conn_hook",
)
LOG_KEYS = tuple(f.name for f in dataclasses.fields(LogConfig))
DNS_KEYS = tuple(f.name for f in dataclasses.fields(DnsConfig))
API_KEYS = ("listen", "token")
DEFAULT_API_LISTEN = "127.0.0.1:9090"


# ---------------------------------------------------------------- reading files


def parse_text(text: str, name: str) -> dict[str, Any]:
    """Parse one document, JSON or TOML by its content (not its file name): JSON when
    it starts with '{', or with '[' and is valid JSON (a TOML document may start with
    '[', a table header, which is not JSON); TOML otherwise."""
    head = text.lstrip()[:1]
    if head == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            pass  # TOML: a table header
        else:
            raise ConfigError(name, f"expected a JSON object at the top, not {type_name(data)}")
    if head == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(name, f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(name, "expected a JSON object at the top")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, f"invalid TOML: {exc}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), f"cannot read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    data = parse_text(text, str(path))
    if is_legacy(data):
        try:
            data = convert_legacy(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.place}", exc.message) from None
    return data


def read_documents(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(label, data)`` for a file (label "") or each config file of a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f
            for f in p.iterdir()
            if not f.name.startswith(".") and f.suffix in (".toml", ".json") and f.is_file()
        )
        if not files:
            raise ConfigError(path, "directory holds no *.toml or *.json file")
        return [(f.name, _read_file(f)) for f in files]
    if not p.exists():
        raise ConfigError(path, "no such file or directory")
    return [("", _read_file(p))]


# ---------------------------------------------------------------- global sections


def _section(top: Table, key: str) -> dict[str, Any]:
    """The keys one global section sets, type-checked."""
    if key == "log":
        tbl = top.table("log", LOG_KEYS)
        if tbl is None:
            return {}
        out: dict[str, Any] = {}
        if "level" in tbl:
            out["level"] = tbl.choice("level", LOG_LEVELS)
        if "output" in tbl:
            out["output"] = tbl.text("output")
        if "format" in tbl:
            out["format"] = tbl.choice("format", LOG_FORMATS)
        return out
    if key == "dns":
        tbl = top.table("dns", DNS_KEYS)
        if tbl is None:
            return {}
        out = {}
        if "mode" in tbl:
            out["mode"] = tbl.choice("mode", DNS_MODES)
        if "protocol" in tbl:
            out["protocol"] = tbl.choice("protocol", DNS_PROTOCOLS)
        if "nameservers" in tbl:
            servers = tbl.strings("nameservers") or []
            place = tbl.place_of("nameservers")
            out["nameservers"] = tuple(
                parse_nameserver(s, f"{place}[{i}]") for i, s in enumerate(servers)
            )
        for k in ("min_ttl", "max_ttl", "cache_size"):
            if k in tbl:
                out[k] = tbl.integer(k, 0)
        return out
    if key == "network":
        tbl = top.table("network", NETWORK_KEYS)
        return parse_network(tbl) if tbl else {}
    raise AssertionError(key)


class _Globals:
    """Merged global keys, remembering which file set each (for directory conflicts)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {"log": {}, "dns": {}, "network": {}, "top": {}}
        self.origin: dict[str, str] = {}

    def add(self, label: str, section: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            name = key if section == "top" else f"{section}.{key}"
            if name in self.origin:
                raise ConfigError(name, f"set in both {self.origin[name]} and {label}")
            self.origin[name] = label
            self.values[section][key] = value


def _top(tbl: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "workers" in tbl:
        out["workers"] = tbl.integer("workers", 1, 1024)
    if "drain_timeout" in tbl:
        out["drain_timeout"] = tbl.seconds("drain_timeout")
    if "pre_conn_hook" in tbl:
        out["pre_conn_hook"] = tbl.text("pre_conn_hook")
    api = tbl.table("api", API_KEYS)
    if api is not None:
        listen = api.text("listen") or DEFAULT_API_LISTEN  # loopback unless told otherwise
        token = api.text("token")
        out["api"] = ApiConfig(parse_addr(listen, api.place_of("listen"), allow_zero=True), token)
    return out


# ---------------------------------------------------------------- the loader


def load_config(path: str | None, cli: CliOptions | None = None) -> Config:
    """Read `path` (file or directory, optional) and `cli` into one validated Config."""
    docs = read_documents(path) if path is not None else []
    return load_documents(docs, cli, where=path or "")


def load_documents(
    docs: list[tuple[str, dict[str, Any]]], cli: CliOptions | None = None, where: str = ""
) -> Config:
    """The loader without the file system: ``(label, data)`` pairs as `read_documents`
    gives them (legacy documents already converted). `where` names the source in the
    "no endpoints" error. Raises `ConfigError` (a `notes.ConfigErrors` when there are
    several); the returned Config's `warnings` are the `notes.warn` lines."""
    with collecting() as warnings:
        config = _load(docs, cli or CliOptions(), where)
    return dataclasses.replace(config, warnings=tuple(warnings))


def _load(docs: list[tuple[str, dict[str, Any]]], cli: CliOptions, where: str) -> Config:
    errors = Errors()  # independent parts: each section, each endpoint, each route
    merged = _Globals()
    tables: list[tuple[str, Table]] = []
    for label, data in docs:
        try:
            top = Table(data, "", TOP_KEYS)
        except ConfigError as exc:
            with errors.part():
                raise _in_file(exc, label) from None
            continue
        tables.append((label, top))
        for section in ("log", "dns", "network", "top"):
            with errors.part():
                try:
                    values = _top(top) if section == "top" else _section(top, section)
                except ConfigError as exc:
                    raise _in_file(exc, label) from None
                merged.add(label, section, values)
    for flag, attr in (("-f/--tfo", "fast_open"), ("-z/--splice", "zero_copy")):
        if getattr(cli, attr):
            warn(flag, f"does nothing ({RETIRED[attr]})")
    cli_log: dict[str, Any] = {}
    cli_dns: dict[str, Any] = {}
    cli_net: dict[str, Any] = {}
    with errors.part():
        cli_log, cli_dns = cli_log_dns(cli)
    with errors.part():
        cli_net = cli_network(cli.network)
    log = LogConfig(**{**merged.values["log"], **cli_log})
    dns = DnsConfig(**{**merged.values["dns"], **cli_dns})
    if dns.min_ttl > dns.max_ttl:
        with errors.part():
            raise ConfigError("dns.min_ttl", f"{dns.min_ttl} is above max_ttl {dns.max_ttl}")
    file_net = NetworkConfig(**merged.values["network"])
    endpoints: list[Endpoint] = []
    for label, top in tables:
        raws: list[Any] = []
        with errors.part():
            try:
                raws = top.tables("endpoints") or []
            except ConfigError as exc:
                raise _in_file(exc, label) from None
        for i, raw in enumerate(raws):
            place = f"{label}:endpoints[{i}]" if label else f"endpoints[{i}]"
            with errors.part():
                endpoints.extend(parse_endpoint(raw, place, file_net, cli_net))
    with errors.part():
        cli_ep = cli_endpoint(cli)
        if cli_ep is not None:
            endpoints.extend(
                parse_endpoint(cli_ep, "command line", file_net, cli_net, CLI_ENDPOINT_FLAGS)
            )
    top_values = merged.values["top"]
    workers = cli.workers if cli.workers is not None else top_values.get("workers", 1)
    with errors.part():
        check_range("-w/--workers", workers, 1, 1024)
    with errors.part():
        if cli.nofile is not None:
            check_range("-n/--nofile", cli.nofile, 1)
    with errors.part():
        if cli.pipe_page is not None:
            check_range("-p/--pipe-page", cli.pipe_page, 1, 65536)
    errors.raise_any()  # what follows looks at the endpoints as a whole
    if not endpoints:
        raise ConfigError(where, "no endpoints (give -l/-r, or [[endpoints]] in the config)")
    _check_something_runs(endpoints)
    _check_listen_unique(endpoints)
    return Config(
        endpoints=tuple(endpoints),
        log=log,
        dns=dns,
        network=dataclasses.replace(file_net, **cli_net),
        api=top_values.get("api"),
        workers=workers,
        nofile=cli.nofile,
        pipe_pages=cli.pipe_page if cli.pipe_page is not None else 16,
        daemon=bool(cli.daemon),
        drain_timeout=top_values.get("drain_timeout", 30.0),
        pre_conn_hook=cli.pre_conn_hook or top_values.get("pre_conn_hook"),
    )


def _check_something_runs(endpoints: list[Endpoint]) -> None:
    """An endpoint with TCP off (`no_tcp`, ``-t``) and UDP off carries nothing: realm
    starts it and serves nothing; snirelay warns, and refuses when no endpoint is left."""
    idle = [
        ep for ep in endpoints if ep.upstream.network.no_tcp and not ep.upstream.network.use_udp
    ]
    if len(idle) == len(endpoints):
        raise ConfigError(
            f"{idle[0].place}.network.no_tcp",
            "nothing to run: TCP is off (no_tcp, -t/--ntcp) and UDP is not on (use_udp, -u/--udp)",
        )
    for ep in idle:
        warn(
            f"{ep.place}.network.no_tcp",
            "the endpoint carries nothing: TCP is off and UDP is not on",
        )


def _in_file(exc: ConfigError, label: str) -> ConfigError:
    if not label:
        return exc
    return ConfigError(f"{label}:{exc.place}" if exc.place else label, exc.message)


def _check_listen_unique(endpoints: list[Endpoint]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for ep in endpoints:
        if ep.listen.port == 0:
            continue
        key = (ep.listen.host, ep.listen.port)
        if key in seen and seen[key] != ep.place:
            raise ConfigError(f"{ep.place}.listen", f"{ep.listen} is already used by {seen[key]}")
        seen[key] = ep.place


__all__ = [
    "CliOptions",
    "ConfigError",
    "convert_legacy",
    "load_config",
    "load_documents",
    "read_documents",
]
