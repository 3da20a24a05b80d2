"""Load a configuration: files (TOML, JSON, legacy v1 JSON), directories and command-line
flags, merged into one frozen `Config`.

How it works
------------
1. `read_documents(path)` gives ``(label, dict)`` pairs: one for a file (label ""), one
   per ``*.toml``/``*.json`` found in a directory and its subdirectories, as realm's
   walk finds them (links followed, every name starting with '.' skipped at any depth,
   a directory reached twice through links read once, so a link loop ends); the label is
   the path relative to the directory (``node/n1.toml``) and the order is by that path.
   `read_env(value, is_path)` reads realm's ``REALM_CONF``: the file or directory it
   names (`names_path`), or else its value as a config's text (label ``REALM_CONF``).
   The format is detected by content (`parse_text`): JSON starts with ``{``, anything
   else is TOML. A legacy v1 document is converted (`legacy.convert_legacy`);
   `parse_document` does both, for a file and for REALM_CONF's text alike.
2. Each document's global sections ([log], [dns], [network], [api], ``workers``,
   ``drain_timeout``) are type-checked into "keys set" dicts and merged; in a directory,
   two files setting the same key is an error naming both files.
3. Command-line flags (`CliOptions`) override the merged globals (log, dns, network).
4. Endpoints are parsed (`endpoints.parse_endpoint`) with the global network from the
   files and the command-line network overrides, so precedence is
   command line > route > endpoint > global. ``-l``/``-r`` add one endpoint.

Places: ``endpoints[i]`` for a file, ``node/NAME.toml:endpoints[i]`` in a directory,
``REALM_CONF:endpoints[i]`` for REALM_CONF's text or the file it names, ``command line``
for the ``-l``/``-r`` endpoint.

Error handling: every problem raises `ConfigError` with a one-line message that names the
place (file, key path, or flag). Nothing else escapes for bad input.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
from snirelay.config.network import (
    NETWORK_KEYS,
    RETIRED,
    check_nofile,
    check_pipe_pages,
    cli_network,
    parse_network,
)
from snirelay.config.notes import Errors, collecting, warn, within
from snirelay.config.options import (
    CLI_ENDPOINT_FLAGS,
    DNS_MAXIMA,
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
    """Parse one document, JSON or TOML by its content (not its file name).

    A byte-order mark (U+FEFF) at the start is dropped: some editors write one, RFC 8259
    (8.1) lets a JSON parser ignore it, and it cannot be part of a config. JSON is a
    document that starts with '{', or with '[' then '{' or ']' (a TOML table header never
    does), or that is valid JSON; anything else is TOML, and a document that is not TOML
    but is valid JSON (a top-level array, string or number) is reported as JSON. Both
    parsers recurse, so a document nested past Python's recursion limit is "nested too
    deeply" rather than a RecursionError; a JSON object that gives a key twice, an
    integer longer than Python converts (4300 digits) and a string holding a lone
    surrogate (a JSON ``\\ud800`` escape; not a character, so no file name, device or
    path; the error names its key) are errors too. Every error is a `ConfigError` whose
    place starts with `name`."""
    text = text.removeprefix("\ufeff")
    body = text.lstrip()
    head = body[:1]

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"key {key!r} is given twice in one object")
            out[key] = value
        return out

    def invalid(kind: str, exc: Exception) -> ConfigError:
        if isinstance(exc, RecursionError):
            why = "nested too deeply"
        elif "integer string conversion" in str(exc):  # Python's int_max_str_digits
            why = "an integer too long to read: " + str(exc).split(";")[0]
        else:
            why = str(exc)
        return ConfigError(name, f"invalid {kind}: {why}")

    def parse_json() -> Any:
        try:
            return json.loads(text, object_pairs_hook=pairs)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise invalid("JSON", exc) from None

    def parse_toml() -> dict[str, Any]:
        try:
            return tomllib.loads(text)
        except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError
            error = invalid("TOML", exc)
        if head != "[":  # not TOML; JSON that does not start with '{' ("null", "42")?
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):
                pass
            else:
                raise ConfigError(name, f"expected a JSON object at the top, not {type_name(data)}")
        raise error

    data: Any
    if head == "{" or (head == "[" and body[1:].lstrip()[:1] in ("{", "]")):
        data, kind = parse_json(), "JSON"
    elif head == "[":  # a JSON array, or TOML starting with a table header
        try:
            data, kind = parse_json(), "JSON"
        except ConfigError as exc:
            if exc.message == "invalid JSON: nested too deeply":  # "[[[[...": no TOML
                raise
            data, kind = parse_toml(), "TOML"
    else:
        data, kind = parse_toml(), "TOML"
    if not isinstance(data, dict):
        raise ConfigError(name, f"expected a JSON object at the top, not {type_name(data)}")
    todo: list[tuple[str, Any]] = [("", data)]  # (place, value): every string, no recursion
    while todo:
        place, item = todo.pop()
        if isinstance(item, dict):
            todo.extend((f"{place}.{k}" if place else k, k) for k in item)
            todo.extend((f"{place}.{k}" if place else k, v) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((f"{place}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                lone = f"\\u{ord(item[exc.start]):04x}"
                raise ConfigError(
                    f"{name}: {place}", f"invalid {kind}: {item!r} holds a lone surrogate ({lone})"
                ) from None
    return data


ENV_CONFIG = "REALM_CONF"  # realm's environment variable: a config's text (or a path)
CONFIG_SUFFIXES = (".toml", ".json")


def parse_document(text: str, name: str) -> dict[str, Any]:
    """One document's text -> its data: `parse_text`, then a legacy v1 document
    converted. `name` is the place its errors give (a file's path, "REALM_CONF")."""
    data = parse_text(text, name)
    if is_legacy(data):
        try:
            data = convert_legacy(data)
        except ConfigError as exc:
            raise within(exc, name) from None
    return data


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), f"cannot read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return parse_document(text, str(path))


def _config_files(root: Path) -> list[Path]:
    """The config files below the directory `root`, relative to it and sorted, found as
    realm's ``WalkDir::new(root).follow_links(true)`` with its filters finds them: every
    entry whose name starts with '.' skipped (a file or a whole directory, at any
    depth), links followed, regular files named ``*.toml``/``*.json`` kept. A directory
    reached a second time (a link loop, or two links to one directory) is read once.

    A config-named link that leads nowhere, or a directory that cannot be listed, is an
    error naming it (realm drops such entries without a word)."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    todo = [Path()]  # a stack, so the walk (and which of two links is read) is fixed
    while todo:
        rel = todo.pop()
        where = root / rel
        try:
            st = where.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(where) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(str(where), f"cannot read: {exc.strerror or exc}") from None
        subdirs: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            config_named = Path(entry.name).suffix in CONFIG_SUFFIXES
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as exc:  # a link loop of its own (ELOOP), no permission
                if config_named:
                    raise ConfigError(entry.path, f"cannot read: {exc.strerror or exc}") from None
                continue
            if is_dir:
                subdirs.append(rel / entry.name)
            elif is_file and config_named:
                found.append(rel / entry.name)
            elif config_named and entry.is_symlink() and not os.path.exists(entry.path):
                raise ConfigError(entry.path, "cannot read: a symbolic link to nothing")
        todo.extend(reversed(subdirs))
    return sorted(found)


def read_documents(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(label, data)`` for a file (label "") or each config file of a directory and
    its subdirectories (label: the path relative to the directory, ``node/n1.toml``)."""
    if not path:
        raise ConfigError("", "the config path is empty")  # Path("") would be "."
    p = Path(path)
    if p.is_dir():
        files = _config_files(p)
        if not files:
            raise ConfigError(path, "directory holds no *.toml or *.json file, in it or below")
        return [(f.as_posix(), _read_file(p / f)) for f in files]
    if not p.exists():
        raise ConfigError(path, "no such file or directory")
    return [("", _read_file(p))]


def names_path(value: str) -> bool:
    """Whether REALM_CONF's `value` names an existing file or directory (then it is
    read as `-c` would read it), rather than being a config's text."""
    return bool(value) and os.path.exists(value)  # False for a NUL byte, a name too long


def read_env(value: str, is_path: bool) -> list[tuple[str, dict[str, Any]]]:
    """``(label, data)`` for REALM_CONF's `value`: the documents of the file or directory
    it names (`is_path`, from `names_path`; a file's label is "REALM_CONF"), or its text
    as one document labelled "REALM_CONF". Every error of reading names REALM_CONF."""
    if is_path:
        try:
            docs = read_documents(value)
        except ConfigError as exc:
            raise ConfigError(f"{ENV_CONFIG}: {exc.place}", exc.message) from None
        return [(label or ENV_CONFIG, data) for label, data in docs]
    try:
        return [(ENV_CONFIG, parse_document(value, ENV_CONFIG))]
    except ConfigError:
        line = value.strip()
        if line and "\n" not in line and "=" not in line and line[0] not in "{[":
            # neither TOML nor JSON could look like this: a path that is not there
            raise ConfigError(
                ENV_CONFIG, f"no such file or directory: {line!r} (nor is it TOML or JSON text)"
            ) from None
        raise


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
        for k, most in DNS_MAXIMA.items():
            if k in tbl:
                out[k] = tbl.integer(k, 0, most)
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
            check_nofile(cli.nofile)  # what the relay needs, what the kernel grants
    with errors.part():
        if cli.pipe_page is not None:
            check_pipe_pages(cli.pipe_page)  # at most /proc/sys/fs/pipe-max-size
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
        first = idle[0].place
        raise ConfigError(
            "-t/--ntcp" if first == "command line" else f"{first}.network.no_tcp",
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
