"""Everything made from the one table of network options (`NetworkConfig`'s fields).

How it works
------------
`OPTIONS` reads each field of `NetworkConfig` with its `Spec` (config/option.py) into a
`NetOption`: name, kind (``bool``, ``int`` or ``float`` seconds, from the annotation),
default and spec. From that list come:

- `parse_network(tbl)`: the keys a ``[network]`` table sets, type- and range-checked.
  The loader calls it for the global table and for every endpoint's and route's
  ``network = {...}``; the command line goes through it too, as a table whose keys are
  displayed as their flags (`cli_network`), so a flag is checked exactly like the key
  ("--send-proxy-version: must be <= 2"). Precedence (command line > route > endpoint >
  global) is applied by the caller, key by key, with `dataclasses.replace`.
- `FLAGS`: each command-line flag with the options it sets (``-m`` sets two); cli.py
  turns them into argparse arguments.
- `KERNEL_LIMITS`: the most Linux accepts for an option (tcp_keepalive,
  tcp_keepalive_probe), checked by `parse_network` at every level with the reason in
  the error. `check_nofile` and `check_pipe_pages` bound the command line's ``-n`` and
  ``-p`` likewise, by what the relay needs and what the kernel grants (/proc/sys/fs).
- `reference_table()`: the markdown table of docs/reference/config.md's network
  section. `update_reference(text)` rewrites the part between the BEGIN/END markers;
  ``python -m snirelay.config.network docs/reference/config.md`` does it in place, and
  a test checks that the committed file is what it would write.

Error handling: the readers raise `ConfigError` naming the key (or flag), nothing else.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from snirelay.config.model import ConfigError, NetworkConfig
from snirelay.config.notes import warn
from snirelay.config.option import SPEC, Flag, Spec
from snirelay.config.table import Table

KINDS = ("bool", "int", "float")


@dataclasses.dataclass(frozen=True, slots=True)
class NetOption:
    """One network option: a field of `NetworkConfig` and its `Spec`."""

    name: str
    kind: str  # one of KINDS ("float" = seconds)
    default: bool | int | float
    spec: Spec


def options_of(table: type[Any]) -> tuple[NetOption, ...]:
    """The options a dataclass declares with `option()` (TypeError for a field that is
    not declared so, or whose type is not bool, int or float)."""
    out = []
    for f in dataclasses.fields(table):
        spec = f.metadata.get(SPEC)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        default = f.default
        if (
            not isinstance(spec, Spec)
            or kind not in KINDS
            or not isinstance(default, bool | int | float)
        ):
            raise TypeError(
                f"{table.__name__}.{f.name}: declare it with option() as bool/int/float"
            )
        out.append(NetOption(f.name, kind, default, spec))
    return tuple(out)


OPTIONS = options_of(NetworkConfig)
BY_NAME = {o.name: o for o in OPTIONS}
# keys realm retired but its README still shows: accepted, warned about, no effect
RETIRED = {
    "zero_copy": "realm retired it: splice is used wherever both ends are plain sockets",
    "fast_open": "realm retired it: TCP Fast Open is not used",
}
NETWORK_KEYS = (*BY_NAME, *RETIRED)


def _flags() -> tuple[tuple[Flag, tuple[NetOption, ...]], ...]:
    groups: dict[Flag, list[NetOption]] = {}
    for o in OPTIONS:
        if o.spec.flag is not None:
            groups.setdefault(o.spec.flag, []).append(o)
    return tuple((flag, tuple(opts)) for flag, opts in groups.items())


FLAGS = _flags()


# ---------------------------------------------------------------- the kernel's limits


@dataclasses.dataclass(frozen=True, slots=True)
class KernelLimit:
    """The most the kernel accepts for a value, and the reason an error gives."""

    maximum: int
    why: str


# Linux answers EINVAL above these (include/net/tcp.h: MAX_TCP_KEEPIDLE and
# MAX_TCP_KEEPINTVL are 32767 seconds, MAX_TCP_KEEPCNT is 127 probes; checked with
# setsockopt on Linux 6.x). net/sockopt.set_keepalive sets TCP_KEEPIDLE and
# TCP_KEEPINTVL from tcp_keepalive and TCP_KEEPCNT from tcp_keepalive_probe, on each
# listener and each outbound socket: a larger value would stop the start ("cannot
# listen ...: Invalid argument") or, set in a route's network, fail every connection of
# that route. So `read_option` refuses it at load, at every level and on the command
# line. (Kept apart from the declarations in config/model.py, whose ranges the
# reference table shows.)
KERNEL_LIMITS = {
    "tcp_keepalive": KernelLimit(32767, "the kernel's most for TCP_KEEPIDLE and TCP_KEEPINTVL"),
    "tcp_keepalive_probe": KernelLimit(127, "the kernel's most for TCP_KEEPCNT"),
}

# -n/--nofile: the fewest open files the relay works with. Before its first connection
# it holds about ten (stdin, stdout, stderr, the event loop's epoll and self-pipe, one
# socket per listener, the API's), and a spliced connection up to six more (two
# sockets, a pipe each way). Below this, -n 1 stops the event loop from starting and
# -n 8 starts a relay that fails every connection ("Too many open files").
NOFILE_MIN = 64
# the most the kernel grants anyone: /proc/sys/fs/nr_open (setrlimit answers EPERM
# above it, even to root); its default when /proc cannot be read
NR_OPEN = "/proc/sys/fs/nr_open"
NR_OPEN_DEFAULT = 1 << 20
# -p/--pipe-page counts pages of 4 KiB, as realm's does. F_SETPIPE_SZ above
# /proc/sys/fs/pipe-max-size (1 MiB unless raised: 256 pages) is refused with EPERM to
# a process without CAP_SYS_RESOURCE (net/pump.PipePool then keeps the 64 KiB default
# without a word), and past it every pooled pipe would pin that much memory. So the
# bound is the machine's pipe-max-size: raise the sysctl to allow more.
PIPE_PAGE = 4096
PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"
PIPE_MAX_SIZE_DEFAULT = 1 << 20


def _proc_int(path: str, default: int) -> int:
    """The integer a /proc/sys file holds, or `default` when it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def check_nofile(value: int) -> None:
    """-n/--nofile: `ConfigError` unless the relay can work with `value` open files and
    the kernel can grant them (`NOFILE_MIN`, /proc/sys/fs/nr_open)."""
    if value < NOFILE_MIN:
        raise ConfigError(
            "-n/--nofile",
            f"must be >= {NOFILE_MIN}, got {value} (the relay holds about 10 files before"
            " its first connection and up to 6 for each connection)",
        )
    most = _proc_int(NR_OPEN, NR_OPEN_DEFAULT)
    if value > most:
        raise ConfigError(
            "-n/--nofile", f"must be <= {most} (the kernel's most, {NR_OPEN}), got {value}"
        )


def check_pipe_pages(value: int) -> None:
    """-p/--pipe-page: `ConfigError` unless 1 <= `value` pages of 4 KiB fit in the
    machine's /proc/sys/fs/pipe-max-size (see `PIPE_PAGE`)."""
    if value < 1:
        raise ConfigError("-p/--pipe-page", f"must be >= 1, got {value}")
    size = _proc_int(PIPE_MAX_SIZE, PIPE_MAX_SIZE_DEFAULT)
    most = max(1, size // PIPE_PAGE)
    if value > most:
        raise ConfigError(
            "-p/--pipe-page",
            f"must be <= {most} pages of 4 KiB ({PIPE_MAX_SIZE} is {size} bytes), got {value}",
        )


# ---------------------------------------------------------------- reading


def read_option(tbl: Table, opt: NetOption) -> bool | int | float | None:
    """The value `tbl` gives `opt`, type- and range-checked (the declared range, then
    the kernel's limit, `KERNEL_LIMITS`), or None when absent."""
    if opt.kind == "bool":
        return tbl.flag(opt.name)
    value: int | float | None
    if opt.kind == "int":
        value = tbl.integer(opt.name, opt.spec.minimum, opt.spec.maximum)
    else:
        value = tbl.seconds(opt.name, positive=opt.spec.positive)
    limit = KERNEL_LIMITS.get(opt.name)
    if value is not None and limit is not None and value > limit.maximum:
        got = value if isinstance(value, int) or not value.is_integer() else int(value)
        raise tbl.error(opt.name, f"must be <= {limit.maximum} ({limit.why}), got {got}")
    return value


def parse_network(tbl: Table) -> dict[str, Any]:
    """The keys a [network] table sets, type-checked (absent keys are left out; a
    retired key is a warning, `notes.warn`)."""
    out = {}
    for key in tbl.data:
        if key in RETIRED:
            warn(tbl.place_of(key), f"does nothing ({RETIRED[key]})")
            continue
        out[key] = read_option(tbl, BY_NAME[key])
    return out


def cli_network(values: Mapping[str, Any]) -> dict[str, Any]:
    """Network options set on the command line (`CliOptions.network`: option name ->
    value), checked as a [network] table whose errors name the flag."""
    display = {o.name: o.spec.flag.display for o in OPTIONS if o.spec.flag is not None}
    return parse_network(Table(dict(values), "command line", NETWORK_KEYS, display))


def from_flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """argparse results (flag dest -> value, None = not given) -> option name -> value."""
    out: dict[str, Any] = {}
    for flag, opts in FLAGS:
        value = given.get(flag.dest)
        if value is not None:
            out.update((o.name, value) for o in opts)
    return out


# ---------------------------------------------------------------- the reference


def metavar(flag: Flag, kind: str) -> str | None:
    """What a flag's value is called in --help and in the reference (None: a switch)."""
    if flag.switch:
        return None
    return flag.metavar or {"bool": "BOOL", "int": "N", "float": "S"}[kind]


def _type(o: NetOption) -> str:
    if o.kind == "bool":
        return "bool"
    limit = KERNEL_LIMITS.get(o.name)
    if o.kind == "float":
        base = "seconds > 0" if o.spec.positive else "seconds"
        return f"{base}, at most {limit.maximum}" if limit is not None else base
    if limit is not None:
        return f"integer {o.spec.minimum}-{limit.maximum}"
    if o.spec.maximum is not None:
        return f"integer {o.spec.minimum}-{o.spec.maximum}"
    return f"integer >= {o.spec.minimum}" if o.spec.minimum else "integer"


def default_text(o: NetOption) -> str:
    if isinstance(o.default, bool):
        return "true" if o.default else "false"
    return f"{o.default:g}" if isinstance(o.default, float) else str(o.default)


def _flag_cell(o: NetOption) -> str:
    flag = o.spec.flag
    if flag is None:
        return ""
    var = metavar(flag, o.kind)
    cell = ", ".join(f"`{n} {var}`" if var else f"`{n}`" for n in flag.names)
    sharing = [p.name for f, opts in FLAGS if f == flag for p in opts]
    if len(sharing) > 1:
        cell += " (sets " + " and ".join(f"`{n}`" for n in sharing) + ")"
    return cell


def reference_table() -> str:
    """The network options as a markdown table (key, type, default, flag, meaning)."""
    lines = ["| key | type | default | flag | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        mark = "**(snirelay)** " if o.spec.snirelay else ""
        cells = (f"`{o.name}`", _type(o), default_text(o), _flag_cell(o), mark + o.spec.doc)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- BEGIN network options: made by `python -m snirelay.config.network PATH` -->\n"
END = "<!-- END network options -->\n"


def update_reference(text: str) -> str:
    """`text` (docs/reference/config.md) with the generated table between the markers."""
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError("the network option markers are missing")
    return text[: start + len(BEGIN)] + reference_table() + text[end:]


def main(argv: list[str]) -> int:
    """Rewrite the network table of each reference file named in `argv`."""
    for path in argv:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = update_reference(text)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"{path}: network options table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
