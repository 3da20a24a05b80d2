"""The command line: realm's flags -> `CliOptions` -> `Config` -> `snirelay.server.run`.

How it works
------------
`main(argv)` looks at the first argument: ``convert``, ``hello``, ``check``,
``explain`` and ``demo`` are subcommands (all but ``convert`` are imported lazily from their own
modules and get the rest of the arguments); anything else is the relay itself, parsed with argparse
using realm's short and long flag names; the network flags (``-u``, ``--tcp-timeout``,
...) are made from the network option table (`config.network.FLAGS`). The flags fill a
`CliOptions` (None = not given) and `load_config` merges them with the config file
(command line > route > endpoint > global). ``-d`` detaches (double fork, setsid,
standard streams to /dev/null) after the config has loaded, so config errors still
reach the terminal.

Exit codes: 0 clean stop, 2 usage or config error (one line on stderr, never a
traceback), otherwise what the server returns (`StartupError.exit_code`, 3 = cannot
bind).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snirelay import __version__
from snirelay.config import network
from snirelay.config.load import CliOptions, load_config, parse_text
from snirelay.config.model import ConfigError


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snirelay",
        description="A realm-compatible TCP/UDP relay that understands TLS server names.",
        epilog="subcommands: snirelay convert OLD.json [-t toml|json] [-o OUT] | "
        "snirelay hello ... | snirelay check HOST:PORT ... | snirelay explain -c CONFIG | snirelay demo ...",
    )
    a = p.add_argument
    a("-c", "--config", metavar="PATH", help="TOML/JSON file or a directory of them")
    a("-l", "--listen", metavar="ADDR", help="listen address (with -r: one endpoint)")
    a("-r", "--remote", metavar="ADDR", help="remote address (with -l: one endpoint)")
    a("-x", "--through", metavar="ADDR", help="source address for outbound connections")
    a("-i", "--interface", metavar="DEV", help="bind outbound connections to this device")
    a("-e", "--listen-interface", metavar="DEV", help="bind the listener to this device")
    a("-a", "--listen-transport", metavar="STR", help="listen transport, e.g. tls;cert=..;key=..")
    a("-b", "--remote-transport", metavar="STR", help="remote transport, e.g. tls;sni=..")
    flag: dict[str, Any] = {"action": "store_const", "const": True, "default": None}
    a("-d", "--daemon", help="detach and run in the background", **flag)
    a("-n", "--nofile", type=_count, metavar="N", help="RLIMIT_NOFILE (default: the hard limit)")
    a("-p", "--pipe-page", type=_count, metavar="N", help="splice pipe size in 4 KiB pages")
    a("-f", "--tfo", dest="fast_open", help="accepted, no effect (deprecated)", **flag)
    a("-z", "--splice", dest="zero_copy", help="accepted, no effect (deprecated)", **flag)
    a(
        "-j",
        "--pre-conn-hook",
        metavar="LIB",
        help="realm's pre-connect hook: a C library "
        "(realm_first_pkt_len, realm_decide_remote_idx) that picks or refuses the remote",
    )
    a("-w", "--workers", type=_count, metavar="N", help="worker processes (SO_REUSEPORT)")
    a("--log-level", metavar="L", help="off, error, warn, info, debug, trace")
    a("--log-output", metavar="P", help="stdout, stderr or a file path")
    a("--log-format", metavar="F", choices=("text", "json"), help="text or json")
    a("--dns-mode", metavar="M")
    a("--dns-protocol", metavar="P")
    a("--dns-servers", metavar="A:53,B:53")
    a("--dns-min-ttl", type=_count, metavar="S")
    a("--dns-max-ttl", type=_count, metavar="S")
    a("--dns-cache-size", type=_count, metavar="N")
    _network_flags(p)
    a("-v", "--version", action="version", version=f"snirelay {__version__}")
    return p


_VALUE_TYPES: dict[str, Callable[[str], Any]] = {"bool": _bool, "int": _count, "float": _seconds}


def _network_flags(parser: argparse.ArgumentParser) -> None:
    """One argument per flag of the network option table (`config.network.FLAGS`)."""
    group = parser.add_argument_group("network options (override every level of [network])")
    for flag, opts in network.FLAGS:
        text = flag.help or opts[0].spec.doc.replace("`", "")
        if flag.switch:
            group.add_argument(
                *flag.names,
                dest=flag.dest,
                action="store_const",
                const=True,
                default=None,
                help=text,
            )
        else:
            kind = opts[0].kind
            group.add_argument(
                *flag.names,
                dest=flag.dest,
                type=_VALUE_TYPES[kind],
                metavar=network.metavar(flag, kind),
                help=f"{text} (default: {network.default_text(opts[0])})",
            )


def options_from(ns: argparse.Namespace) -> CliOptions:
    """The parsed flags as `CliOptions`: every field but `network` has a same-named dest;
    the network flags become `network` (option name -> value)."""
    fields = [name for name in CliOptions.__dataclass_fields__ if name != "network"]
    return CliOptions(
        **{name: getattr(ns, name) for name in fields},
        network=network.from_flags(vars(ns)),
    )


_SUBCOMMANDS = {
    "hello": "snirelay.diagnose.hello",
    "check": "snirelay.diagnose.check",
    "explain": "snirelay.diagnose.explain",
    "demo": "snirelay.demo",
}


def _run_subcommand(module: str, rest: list[str]) -> int:
    """Import a subcommand's module lazily and call its ``main(rest)``."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        print(f"snirelay: {module} is not available: {exc}", file=sys.stderr)
        return 2
    return int(mod.main(rest))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "convert":
        return convert_main(args[1:])
    if args and args[0] in _SUBCOMMANDS:
        return _run_subcommand(_SUBCOMMANDS[args[0]], args[1:])
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.config is None and ns.listen is None and ns.remote is None:
        parser.print_usage(sys.stderr)
        print("snirelay: give -c CONFIG, or -l ADDR -r ADDR", file=sys.stderr)
        return 2
    try:
        config = load_config(ns.config, options_from(ns))
    except ConfigError as exc:
        print(f"snirelay: {exc}", file=sys.stderr)
        return 2
    from snirelay import server

    if config.daemon and daemonize() != 0:
        return 0  # the parent: the daemon runs on
    try:
        code: int = server.run(config, lambda: load_config(ns.config, options_from(ns)))
    except server.StartupError as exc:
        print(f"snirelay: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    return code


def daemonize() -> int:
    """Detach: fork, setsid, fork again. Returns 0 in the daemon, the first child's pid
    in the original process (which should exit). stdin/stdout/stderr go to /dev/null;
    a log file set with --log-output / [log] output is opened later and unaffected."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.waitpid(pid, 0)
        return pid
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
    return 0


# ---------------------------------------------------------------- convert


def convert_main(argv: list[str]) -> int:
    """`snirelay convert OLD.json [-t toml|json] [-o OUT]`: legacy v1 -> modern."""
    from snirelay.config.legacy import convert_legacy, is_legacy
    from snirelay.config.tomlwrite import dumps

    p = argparse.ArgumentParser(
        prog="snirelay convert", description="Convert realm's legacy v1 JSON config."
    )
    p.add_argument("path", metavar="OLD.json")
    p.add_argument("-t", "--type", choices=("toml", "json"), default="toml")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    ns = p.parse_args(argv)
    try:
        try:
            text = Path(ns.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
            raise ConfigError(ns.path, msg) from None
        data: Any = parse_text(text, ns.path)
        if not is_legacy(data):
            raise ConfigError(ns.path, "not a legacy v1 config (no listening_ports etc.)")
        try:
            modern = convert_legacy(data)
        except ConfigError as exc:
            raise ConfigError(f"{ns.path}: {exc.place}", exc.message) from None
        out = dumps(modern) if ns.type == "toml" else json.dumps(modern, indent=2) + "\n"
        # the result must load: a legacy file that converts into an invalid config is
        # reported here, not at the next start
        _check_loads(out, ns.type)
    except ConfigError as exc:
        print(f"snirelay: {exc}", file=sys.stderr)
        return 2
    if ns.output:
        try:
            Path(ns.output).write_text(out, encoding="utf-8")
        except OSError as exc:
            print(f"snirelay: {ns.output}: cannot write: {exc.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(out)
    return 0


def _check_loads(text: str, kind: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"converted.{kind}"
        path.write_text(text, encoding="utf-8")
        load_config(str(path))


def entry() -> None:
    sys.exit(main())
