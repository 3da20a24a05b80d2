"""The command line: realm's flags -> `CliOptions` -> `Config` -> `snirelay.server.run`.

How it works
------------
`main(argv)` looks at the first argument: ``convert``, ``hello``, ``check``,
``explain`` and ``demo`` are subcommands (each imported lazily from its own module, whose
``main`` gets the rest of the arguments); any other word that is not a flag is a usage
error (``unknown command 'chek' (did you mean 'check'?)``, from `difflib`, or "the relay
takes flags"); anything else is the relay itself, parsed with argparse using realm's
short and long flag names; the network flags (``-u``, ``--tcp-timeout``, ...) are made
from the network option table (`config.network.FLAGS`). The flags fill a `CliOptions`
(None = not given).

Where the config comes from (`Source`): ``-c PATH`` (a file, or a directory read
recursively); else, without ``-l``/``-r``, realm's ``REALM_CONF`` environment variable,
which names a file or directory or else is a config's text itself (TOML, JSON or legacy
v1), decided once at start (`load.names_path`); else the ``-l``/``-r`` endpoint alone.
With a config from ``-c`` or REALM_CONF the endpoint flags (``-l -r -x -i -e -a -b``)
are ignored, as realm ignores them, with one warning line per flag group
(`options.without_endpoint`); the global flags (log, dns, network, ...) apply on top of
any source (command line > route > endpoint > global). The reload callable given to
`server.run` reads the same source again with the same flags.

``-d`` detaches (double fork, setsid, standard streams to /dev/null) after the config
has loaded, so config errors still reach the terminal; the original process prints the
daemon's pid on stdout before it exits. ``--pid-file PATH`` is opened (created) before
that, so a path that cannot be written is still a usage error on the terminal; the
daemon (or, without ``-d``, the relay itself) writes its pid there before the original
process exits, and removes the file when `server.run` returns if it still holds that
pid.

Error handling
--------------
Exit codes: 0 clean stop, 2 usage or config error (one line per problem on stderr,
never a traceback), 1 when the relay cannot detach or stdout was closed early, 130 on
Ctrl-C, otherwise what the server returns (`StartupError.exit_code`, 3 = cannot bind).
`entry()` (the console script and ``python -m snirelay``) makes a reader that left
early (``snirelay --help | head -1``) quiet: the BrokenPipeError ends the run with
exit 1 and stdout pointed at /dev/null, so nothing is written at exit either.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from snirelay import __version__
from snirelay.config import network
from snirelay.config.load import (
    ENV_CONFIG,
    CliOptions,
    load_config,
    load_documents,
    names_path,
    read_env,
)
from snirelay.config.model import DNS_MODES, DNS_PROTOCOLS, Config, ConfigError, DnsConfig
from snirelay.config.notes import error_lines
from snirelay.config.options import without_endpoint


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


class OneLineParser(argparse.ArgumentParser):
    """argparse with a usage error as one line, exit 2 (argparse's own prints its usage
    block first): "snirelay: -n/--nofile: expected an integer >= 0, got '-1'"."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    dns = DnsConfig()
    p = OneLineParser(
        prog="snirelay",
        description="A realm-compatible TCP/UDP relay that understands TLS server names.",
        epilog=f"environment: {ENV_CONFIG}, read when none of -c, -l, -r is given: a config's "
        "text (TOML, JSON or legacy v1 JSON) or the path of a file or directory. "
        "subcommands: snirelay convert OLD.json [-t toml|json] [-o OUT] | "
        "snirelay hello ... | snirelay check HOST:PORT ... | snirelay explain -c CONFIG | snirelay demo ...",
    )
    a = p.add_argument
    a(
        "-c",
        "--config",
        metavar="PATH",
        help="a TOML/JSON file, or a directory of them (subdirectories too; names "
        "starting with '.' skipped)",
    )
    a(
        "-l",
        "--listen",
        metavar="ADDR",
        help="listen address (with -r: one endpoint; ignored with -c)",
    )
    a(
        "-r",
        "--remote",
        metavar="ADDR",
        help="remote address (with -l: one endpoint; ignored with -c)",
    )
    a("-x", "--through", metavar="ADDR", help="source address for the -l/-r endpoint's connections")
    a(
        "-i",
        "--interface",
        metavar="DEV",
        help="bind the -l/-r endpoint's outbound connections to DEV",
    )
    a("-e", "--listen-interface", metavar="DEV", help="bind the -l/-r endpoint's listener to DEV")
    a("-a", "--listen-transport", metavar="STR", help="listen transport, e.g. tls;cert=..;key=..")
    a("-b", "--remote-transport", metavar="STR", help="remote transport, e.g. tls;sni=..")
    flag: dict[str, Any] = {"action": "store_const", "const": True, "default": None}
    a(
        "-d",
        "--daemon",
        help="detach once the config has loaded, and print the daemon's pid",
        **flag,
    )
    a(
        "--pid-file",
        metavar="PATH",
        help="write the relay's pid (with -d: the daemon's) to PATH; removed at a clean stop",
    )
    a("-n", "--nofile", type=_count, metavar="N", help="RLIMIT_NOFILE (default: the hard limit)")
    a(
        "-p",
        "--pipe-page",
        type=_count,
        metavar="N",
        help="splice pipe size in 4 KiB pages (default: 16)",
    )
    a("-f", "--tfo", dest="fast_open", help="accepted, no effect (retired in realm)", **flag)
    a("-z", "--splice", dest="zero_copy", help="accepted, no effect (retired in realm)", **flag)
    a(
        "-j",
        "--pre-conn-hook",
        metavar="LIB",
        help="realm's pre-connect hook: a C library "
        "(realm_first_pkt_len, realm_decide_remote_idx) that picks or refuses the remote",
    )
    a(
        "-w",
        "--workers",
        type=_count,
        metavar="N",
        help="worker processes sharing the listeners (SO_REUSEPORT; default: 1)",
    )
    a("--log-level", metavar="L", help="off, error, warn, info, debug, trace (default: off)")
    a("--log-output", metavar="P", help="stdout, stderr or a file path (default: stdout)")
    a("--log-format", metavar="F", choices=("text", "json"), help="text or json (default: text)")
    a("--dns-mode", metavar="M", help=f"{', '.join(DNS_MODES)} (default: {dns.mode})")
    a("--dns-protocol", metavar="P", help=f"{', '.join(DNS_PROTOCOLS)} (default: {dns.protocol})")
    a(
        "--dns-servers",
        metavar="A:53,B:53",
        help="nameservers, IP[:PORT] separated by commas (default: the system resolver)",
    )
    a(
        "--dns-min-ttl",
        type=_count,
        metavar="S",
        help=f"keep an answer at least S seconds (default: {dns.min_ttl})",
    )
    a(
        "--dns-max-ttl",
        type=_count,
        metavar="S",
        help=f"keep an answer at most S seconds (default: {dns.max_ttl})",
    )
    a(
        "--dns-cache-size",
        type=_count,
        metavar="N",
        help=f"names the DNS cache holds (default: {dns.cache_size})",
    )
    _network_flags(p)
    a(
        "-V",
        "-v",
        "--version",
        action="version",
        version=f"snirelay {__version__}",
        help="print the version and exit",
    )
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
    "convert": "snirelay.convert",
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
    try:
        return int(mod.main(rest))
    except KeyboardInterrupt:
        return 130


def not_a_command(word: str) -> str:
    """The one-line usage error for a first argument that is neither a subcommand nor a
    flag: a did-you-mean when it is close to a subcommand's name."""
    names = sorted(_SUBCOMMANDS)
    # "help" is close to "hello", but whoever typed it wants --help
    close = [] if word == "help" else difflib.get_close_matches(word.lower(), names, n=1)
    if close:
        return f"unknown command {word!r} (did you mean {close[0]!r}?)"
    return (
        f"unexpected argument {word!r}: the relay takes flags, not positional arguments "
        f"(-c CONFIG, or -l ADDR -r ADDR); the commands are {', '.join(names)} "
        "(see snirelay --help)"
    )


@dataclass(frozen=True)
class Source:
    """Where the config comes from: ``-c PATH``, or REALM_CONF (`is_path`: it names a
    file or directory; else it is the config's text). Decided once, so a reload reads
    the same source the same way."""

    name: str  # "-c" or "REALM_CONF", as warnings name it
    value: str
    is_path: bool = True

    def load(self, cli: CliOptions) -> Config:
        if self.name == ENV_CONFIG:
            return load_documents(read_env(self.value, self.is_path), cli, where=ENV_CONFIG)
        return load_config(self.value, cli)


def source_of(ns: argparse.Namespace, environ: Mapping[str, str]) -> Source | None:
    """`-c`, else REALM_CONF when neither -l nor -r is given (an empty value is unset),
    else None (the -l/-r endpoint alone)."""
    if ns.config is not None:
        return Source("-c", ns.config)
    value = environ.get(ENV_CONFIG, "")
    if value.strip() and ns.listen is None and ns.remote is None:
        return Source(ENV_CONFIG, value, names_path(value))
    return None


def options_for(
    source: Source | None, ns: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[CliOptions, list[str]]:
    """The flags as `CliOptions` for this source, and the warnings to print: with a
    config from -c or REALM_CONF the endpoint flags are dropped, as realm drops them;
    a REALM_CONF that is set but not read is named (realm reads it before any flag)."""
    cli = options_from(ns)
    warnings: list[str] = []
    if source is not None:
        cli, ignored = without_endpoint(cli)
        warnings += [
            f"{group} ignored: {source.name} is given (as realm does)" for group in ignored
        ]
    if environ.get(ENV_CONFIG, "").strip() and (source is None or source.name != ENV_CONFIG):
        given = "-c" if source is not None else "-l/-r"
        warnings.append(
            f"{ENV_CONFIG} ignored: {given} is given (realm would read {ENV_CONFIG} instead)"
        )
    return cli, warnings


def _load(source: Source | None, cli: CliOptions) -> Config:
    return load_config(None, cli) if source is None else source.load(cli)


def _warn(text: str) -> None:
    print(f"snirelay: warning: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _SUBCOMMANDS:
        return _run_subcommand(_SUBCOMMANDS[args[0]], args[1:])
    if args and not args[0].startswith("-"):
        print(f"snirelay: {not_a_command(args[0])}", file=sys.stderr)
        return 2
    parser = build_parser()
    ns = parser.parse_args(args)
    source = source_of(ns, os.environ)
    if source is None and ns.listen is None and ns.remote is None:
        parser.print_usage(sys.stderr)
        print(
            f"snirelay: give -c CONFIG, or -l ADDR -r ADDR (or set {ENV_CONFIG})", file=sys.stderr
        )
        return 2
    cli, warnings = options_for(source, ns, os.environ)
    for line in warnings:
        _warn(line)
    try:
        config = _load(source, cli)
    except ConfigError as exc:
        for line in error_lines(exc):
            print(f"snirelay: {line}", file=sys.stderr)
        return 2
    for line in config.warnings:  # on the terminal whatever [log] says; a reload logs them
        _warn(line)
    return _run(config, lambda: _load(source, cli), ns.pid_file)


def _run(config: Config, loader: Callable[[], Config], pid_file: str | None) -> int:
    """Detach if asked, write the pid file, and run the relay."""
    from snirelay import server

    pid_path = os.path.abspath(pid_file) if pid_file is not None else None
    pid_fd = None
    try:
        if pid_path is not None:
            pid_fd = os.open(pid_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        if pid_fd is not None and not config.daemon:
            write_pid(pid_fd)
    except OSError as exc:
        print(f"snirelay: --pid-file: {pid_file}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    if config.daemon:
        try:  # the log file, before detaching: the daemon has no terminal to say why
            from snirelay.observe.log import open_output

            open_output(config.log.output).close()
        except server.StartupError as exc:
            print(f"snirelay: {exc}", file=sys.stderr)
            return int(exc.exit_code)
        try:
            daemon = daemonize(pid_fd)
        except DetachError as exc:
            print(f"snirelay: {exc}", file=sys.stderr)
            return 1
        if daemon:  # the original process: the daemon runs on
            print(f"snirelay: running in the background, pid {daemon}")
            return 0
    try:
        return int(server.run(config, loader))
    except server.StartupError as exc:
        print(f"snirelay: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    finally:
        if pid_path is not None:
            remove_pid_file(pid_path)


# ---------------------------------------------------------------- -d, --pid-file


class DetachError(Exception):
    """The relay could not detach (a fork failed, or the daemon did not report)."""


def write_pid(fd: int) -> None:
    """Write this process's pid to the pid file open on `fd`, and close it."""
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def remove_pid_file(path: str) -> None:
    """Remove the pid file if it still holds this process's pid (another relay may have
    written its own there since)."""
    try:
        with open(path, encoding="ascii") as f:
            held = f.read().strip()
        if held == str(os.getpid()):
            os.unlink(path)
    except (OSError, ValueError):
        pass


def daemonize(pid_fd: int | None = None) -> int:
    """Detach: fork, setsid, fork again. Returns 0 in the daemon and the daemon's pid in
    the original process (which should exit). stdin/stdout/stderr go to /dev/null; a log
    file set with --log-output / [log] output is opened later and unaffected.

    The daemon writes its pid to `pid_fd` (the --pid-file, opened by the caller; closed
    here in both processes), then reports it over a pipe, which the original process
    reads before it returns: so the pid file is written before the original process
    exits (what systemd's ``PIDFile=`` expects). Raises `DetachError` in the original
    process when a fork fails or the daemon does not report."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        r, w = os.pipe()
    except OSError as exc:
        raise DetachError(f"cannot detach: {exc.strerror}") from None
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        raise DetachError(f"cannot detach: {exc.strerror}") from None
    if pid > 0:
        os.close(w)
        if pid_fd is not None:
            os.close(pid_fd)
        try:
            report = _read_line(r)
            os.waitpid(pid, 0)
        finally:
            os.close(r)
        if report.isdigit():
            return int(report)
        raise DetachError(report or "cannot detach: the daemon exited before it started")
    # the first child: a new session, then the daemon; it never returns
    try:
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
    except BaseException as exc:  # nothing may run on in this process
        _report(w, f"cannot detach: {getattr(exc, 'strerror', None) or exc!r}")
        os._exit(1)
    # the daemon
    if pid_fd is not None:
        try:
            write_pid(pid_fd)
        except OSError as exc:
            _report(w, f"--pid-file: cannot write: {exc.strerror}")
            os._exit(2)
    _report(w, str(os.getpid()))
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
    return 0


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def _read_line(fd: int) -> str:
    """What the other side of the pipe reported: one line, or "" if it closed first."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def entry() -> None:
    """The console script and ``python -m snirelay``: `main()`, with a reader that left
    early (``snirelay --help | head -1``) or Ctrl-C ending the run quietly."""
    code: int | str | None
    try:
        try:
            code = main()
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            code = exc.code
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
    except BrokenPipeError:
        # as the Python docs advise: the rest of the output goes nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
