"""Run the relay as a real subprocess for tests, and read what it logged.

How it works: `RelayProcess` writes the config text (if any) into the test's
`tmp_path`, starts `python -m snirelay` with `PYTHONPATH=<repo>/src` prepended and
stderr redirected to `tmp_path/"relay.log"` (stdout to `relay.out`), and polls that
file: `start()` returns once the relay has logged one "listening on " line per
listener. Nothing here blocks without a deadline; `stop()` sends a signal, waits,
and falls back to SIGKILL by PID.

A relay may listen on port 0 (``listen = "127.0.0.1:0"``): every listener logs the
address it actually bound ("listening on 127.0.0.1:41234 (endpoints[0], tcp)"), and
`listening()` / `port()` read those lines back.

Per-connection records are read back with `records()`: JSON lines with
`"event": "conn"` (``--log-format json`` / ``log.format = "json"``) and text lines
``conn id=12 listener=... up=123 down=456 ...`` are both understood and returned as
dicts with the JSON key names (``bytes_up``, ``bytes_down``, ``sni`` None for "-").

Resource handling: the process is killed and reaped on `stop()` / context exit,
whatever happened in the test; log files stay in `tmp_path` for pytest to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

_TEXT_KEYS = {"up": "bytes_up", "down": "bytes_down"}
_INT_KEYS = {"id", "bytes_up", "bytes_down"}
_FLOAT_KEYS = {"duration"}
_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:]+):(\d+) \((.+), (tcp|udp|http)\)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind port 0, read it back, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def relay_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a relay subprocess: ours, with `<repo>/src` first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + old if old else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def run_relay(
    args: list[str], *, timeout: float = 20, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m snirelay *args` to completion (for commands that exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "snirelay", *args],
        env=relay_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def parse_text_record(line: str) -> dict[str, Any] | None:
    """`... conn id=12 listener=endpoints[0] ... close=eof` -> dict, or None if not a record."""
    at = line.find("conn id=")
    if at < 0:
        return None
    rec: dict[str, Any] = {"event": "conn"}
    body = line[at + len("conn ") :]
    try:
        tokens = shlex.split(body)  # values with spaces are written "quoted"
    except ValueError:
        tokens = body.split()
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            continue
        key = _TEXT_KEYS.get(key, key)
        parsed: Any = value
        if value == "-":
            parsed = None
        elif key in _INT_KEYS:
            try:
                parsed = int(value)
            except ValueError:
                parsed = value
        elif key in _FLOAT_KEYS:
            try:
                parsed = float(value.rstrip("s"))
            except ValueError:
                parsed = value
        rec[key] = parsed
    return rec


def parse_records(text: str) -> list[dict[str, Any]]:
    """Every per-connection record in a log text, JSON or text format, in order."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        brace = line.find("{")
        if brace >= 0:
            try:
                obj = json.loads(line[brace:])
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                if obj.get("event") == "conn":
                    out.append(obj)
                continue
        rec = parse_text_record(line)
        if rec is not None:
            out.append(rec)
    return out


class RelayProcess:
    """The relay as a subprocess; a context manager that always stops it.

    `config` is the config file text (written to ``tmp_path/"relay.<fmt>"``); with a
    config the command is ``python -m snirelay -c FILE --log-level info --log-output
    stderr *args``; without one it is ``python -m snirelay --log-level info
    --log-output stderr *args`` (pass ``log_flags=False`` to send `args` alone).
    """

    def __init__(
        self,
        args: list[str] | None = None,
        *,
        config: str | None = None,
        fmt: str = "toml",
        tmp_path: Path,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        log_flags: bool = True,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.args = list(args or [])
        self.config_path: Path | None = None
        cmd = [sys.executable, "-m", "snirelay"]
        if config is not None:
            self.config_path = self.tmp_path / f"relay.{fmt}"
            self.config_path.write_text(config)
            cmd += ["-c", str(self.config_path)]
        if log_flags:
            cmd += ["--log-level", "info", "--log-output", "stderr"]
        cmd += self.args
        self.cmd = cmd
        self.env = relay_env(env)
        self.preexec_fn = preexec_fn
        self.log_path = self.tmp_path / "relay.log"
        self.out_path = self.tmp_path / "relay.out"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process without waiting for anything."""
        if self.proc is not None:
            raise RuntimeError("relay already started")
        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.tmp_path,
                preexec_fn=self.preexec_fn,
            )

    def start(self, wait_listen: int = 1, timeout: float = 10) -> None:
        """Spawn and wait until the log shows `wait_listen` "listening on " lines.

        Raises RuntimeError (with the log) if the process exits first or `timeout`
        passes; the process is stopped in that case.
        """
        self.spawn()
        try:
            self.wait_log("listening on ", count=wait_listen, timeout=timeout)
        except BaseException:
            self.stop(signal.SIGKILL, timeout=5)
            raise

    def wait_log(self, needle: str, *, count: int = 1, timeout: float = 10) -> str:
        """Wait until `needle` occurs `count` times in the log; return the log text."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            text = self.log
            if text.count(needle) >= count:
                return text
            rc = self.proc.poll()
            if rc is not None:
                text = self.log
                if text.count(needle) >= count:
                    return text
                raise RuntimeError(
                    f"relay exited with {rc} before logging {needle!r} x{count}\n"
                    f"cmd: {self.cmd}\n--- log ---\n{text}\n--- stdout ---\n{self.stdout}"
                )
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"relay did not log {needle!r} x{count} within {timeout}s\n"
                    f"cmd: {self.cmd}\n--- log ---\n{text}\n--- stdout ---\n{self.stdout}"
                )
            time.sleep(0.02)

    def wait(self, timeout: float = 10) -> int:
        """Wait for the process to exit by itself; return its exit code (TimeoutExpired if not)."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit code
        (negative signal number if killed by a signal)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode is not None
        return proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    # -- output ----------------------------------------------------------------------

    @property
    def log(self) -> str:
        """Everything the relay wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def stdout(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def listening(self) -> list[tuple[str, int, str]]:
        """(host, port, place) of every "listening on" line logged so far, in order
        (with workers, one line per worker and listener). IPv6 hosts keep no brackets."""
        out: list[tuple[str, int, str]] = []
        for m in _LISTENING.finditer(self.log):
            out.append((m.group(1).strip("[]"), int(m.group(2)), m.group(3)))
        return out

    def port(self, place: str | None = None) -> int:
        """The port the first listener (of `place`, e.g. "endpoints[1]") bound, read
        from its "listening on" line; KeyError with the log if there is none yet."""
        for _host, port, where in self.listening():
            if place is None or where == place:
                return port
        raise KeyError(f"no 'listening on' line for {place or 'any listener'}\n{self.log}")

    def records(self) -> list[dict[str, Any]]:
        """The per-connection records logged so far (JSON or text format)."""
        return parse_records(self.log)

    def wait_records(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until at least `count` records were logged; return them all.

        Raises AssertionError with the log if they do not appear in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if len(recs) >= count:
                return recs
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} conn records, got {len(recs)} within {timeout}s\n"
                    f"--- log ---\n{self.log}"
                )
            time.sleep(0.02)

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(signal.SIGKILL if exc_type is not None else signal.SIGTERM, timeout=10)


@contextlib.contextmanager
def relay_chain(
    tmp_path: Path, front: str, back: str
) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    """Two relays, `front` in front of `back` (config texts), each in its own directory
    under `tmp_path`, both started (the back one first); (front, back), both stopped."""
    (tmp_path / "front").mkdir()
    (tmp_path / "back").mkdir()
    with (
        RelayProcess(config=back, tmp_path=tmp_path / "back") as b,
        RelayProcess(config=front, tmp_path=tmp_path / "front") as a,
    ):
        b.start()
        a.start()
        yield a, b
