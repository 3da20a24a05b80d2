"""The command line as realm's, as a real process: REALM_CONF (text and path, reloaded),
``-c DIR`` with subdirectories and a link loop, ``-c FILE -l -r`` (the flags ignored),
``-V``, a mistyped subcommand, a closed pipe and Ctrl-C without a traceback, and ``-d``
with ``--pid-file``. Everything on loopback; every wait has a deadline.

(Not named test_cli_realm.py: tests/unit has that name, and the suite's test directories
are not packages, so two modules of one name cannot both be collected.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.peers import EchoServer, SilentServer
from helpers.procs import alive
from helpers.relay import REPO, RelayProcess, free_port, relay_env, run_relay
from helpers.wait import wait_until

pytestmark = pytest.mark.integration

VECTOR = REPO / "tests" / "vectors" / "clienthello" / "curl_sni_http2.bin"


def endpoint(remote: str, listen: str = "127.0.0.1:0") -> str:
    return f'[[endpoints]]\nlisten = "{listen}"\nremote = "{remote}"\n'


def banner_at(port: int) -> bytes:
    """The first bytes a client of 127.0.0.1:`port` receives (an EchoServer's banner)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(64)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- REALM_CONF


def test_realm_conf_text_runs_the_relay(tmp_path: Path) -> None:
    with EchoServer(banner=b"from-env") as backend:
        env = {"REALM_CONF": endpoint(backend.addr)}
        with RelayProcess([], tmp_path=tmp_path, env=env) as relay:
            relay.start()
            assert banner_at(relay.port("REALM_CONF:endpoints[0]")) == b"from-env"


def test_realm_conf_path_is_read_again_on_reload(tmp_path: Path) -> None:
    conf = tmp_path / "realm.toml"
    with EchoServer(banner=b"first") as one, EchoServer(banner=b"second") as two:
        conf.write_text(endpoint(one.addr))
        with RelayProcess([], tmp_path=tmp_path, env={"REALM_CONF": str(conf)}) as relay:
            relay.start()
            # (a second port-0 endpoint added by a reload is not started today: a free port)
            conf.write_text(endpoint(one.addr) + endpoint(two.addr, f"127.0.0.1:{free_port()}"))
            os.kill(relay.pid, signal.SIGHUP)
            relay.wait_log("listening on ", count=2)
            assert banner_at(relay.port("REALM_CONF:endpoints[1]")) == b"second"


@pytest.mark.parametrize(
    ("value", "start"),
    [
        ("[[endpoints]\nlisten =", "snirelay: REALM_CONF: invalid TOML: "),
        ('{"endpoints": [', "snirelay: REALM_CONF: invalid JSON: "),
        ("/nonexistent/realm.toml", "snirelay: REALM_CONF: no such file or directory: "),
    ],
)
def test_bad_realm_conf_exits_2_with_one_line(value: str, start: str) -> None:
    proc = run_relay([], env={"REALM_CONF": value})
    assert proc.returncode == 2, proc.stderr
    assert lines(proc.stderr) == lines(proc.stderr)[:1] and proc.stderr.startswith(start)
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- -c DIR, -c with -l/-r


def test_config_directory_is_read_recursively_and_a_link_loop_ends(tmp_path: Path) -> None:
    conf = tmp_path / "config"
    (conf / "node" / ".old").mkdir(parents=True)
    (conf / "log.toml").write_text('[log]\nlevel = "info"\n')
    (conf / "node" / ".old" / "stale.toml").write_text("garbage [[[")
    (conf / "node" / "loop").symlink_to("..")
    with EchoServer(banner=b"n1") as backend:
        (conf / "node" / "n1.toml").write_text(endpoint(backend.addr))
        with RelayProcess(["-c", str(conf)], tmp_path=tmp_path) as relay:
            relay.start(timeout=20)
            assert banner_at(relay.port("node/n1.toml:endpoints[0]")) == b"n1"
            assert [place for _, _, place in relay.listening()] == ["node/n1.toml:endpoints[0]"]


def test_listen_and_remote_are_ignored_with_c(tmp_path: Path) -> None:
    """-l names a port that is taken: the relay starts (exit 3 if it tried to bind it)."""
    with (
        EchoServer(banner=b"file") as backend,
        socket.socket() as taken,
    ):
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["-l", busy, "-r", "127.0.0.1:9", "-x", "127.0.0.1"]
        with RelayProcess(args, config=endpoint(backend.addr), tmp_path=tmp_path) as relay:
            relay.start()
            assert banner_at(relay.port("endpoints[0]")) == b"file"
            warned = [line for line in lines(relay.log) if "warning" in line]
            assert warned == [
                "snirelay: warning: -l/-r ignored: -c is given (as realm does)",
                "snirelay: warning: -x/--through ignored: -c is given (as realm does)",
            ]


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("flag", ["-V", "-v", "--version"])
def test_version(flag: str) -> None:
    proc = run_relay([flag])
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("snirelay ") and len(lines(proc.stdout)) == 1


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["chek", "example.com:443"], "snirelay: unknown command 'chek' (did you mean 'check'?)"),
        (["explian"], "snirelay: unknown command 'explian' (did you mean 'explain'?)"),
    ],
)
def test_mistyped_subcommand(argv: list[str], line: str) -> None:
    proc = run_relay(argv)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, line + "\n", "")


def test_positional_argument() -> None:
    proc = run_relay(["127.0.0.1:5000"])
    assert proc.returncode == 2
    (line,) = lines(proc.stderr)
    assert "the relay takes flags, not positional arguments" in line


# ---------------------------------------------------------------- a closed pipe, Ctrl-C


PORTS = 2000  # endpoints: `explain` and `convert` write far more than a pipe's 64 KiB


def _big_config(tmp_path: Path) -> Path:
    path = tmp_path / "big.toml"
    text = "".join(endpoint("127.0.0.1:9", f"127.0.0.1:{20000 + i}") for i in range(PORTS))
    path.write_text(text)
    return path


def _legacy(tmp_path: Path) -> Path:
    path = tmp_path / "old.json"
    ports = [str(20000 + i) for i in range(PORTS)]
    path.write_text(
        json.dumps(
            {
                "listening_addresses": ["127.0.0.1"],
                "listening_ports": ports,
                "remote_addresses": ["127.0.0.1"],
                "remote_ports": ports,
            }
        )
    )
    return path


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "--help": lambda _: ["--help"],
    "-V": lambda _: ["-V"],
    "hello": lambda _: ["hello", str(VECTOR)],
    "explain": lambda tmp: ["explain", "-c", str(_big_config(tmp))],
    "convert": lambda tmp: ["convert", str(_legacy(tmp))],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_stdout_closed_before_the_first_write(name: str, tmp_path: Path) -> None:
    """The reader is gone before the command writes anything: every write fails (EPIPE)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snirelay", *COMMANDS[name](tmp_path)],
            stdout=w,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=relay_env(),
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    assert proc.stderr == ""
    assert proc.returncode in (0, 1)


@pytest.mark.parametrize("name", ["explain", "convert"])
def test_reader_leaves_after_the_first_line(name: str, tmp_path: Path) -> None:
    """``snirelay ... | head -1``, made certain: the reader takes the first bytes and
    closes its end while the command still has far more than a pipe holds to write.
    (CPython may drop the rest of one large write without an error, exit 0; a later
    write fails, exit 1. Neither may print anything.)"""
    relay = subprocess.Popen(
        [sys.executable, "-m", "snirelay", *COMMANDS[name](tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=relay_env(),
    )
    assert relay.stdout is not None
    try:
        first = os.read(relay.stdout.fileno(), 100)
        relay.stdout.close()
        _, err = relay.communicate(timeout=60)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(10)
    assert first
    assert err == b"" and relay.returncode in (0, 1)


def test_ctrl_c_in_a_subcommand_is_quiet(tmp_path: Path) -> None:
    with SilentServer() as target:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snirelay", "check", target.addr, "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=relay_env(),
            text=True,
        )
        try:
            wait_until(lambda: target.connections >= 1, 30, "check connects")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err + out


# ---------------------------------------------------------------- -d, --pid-file


def test_daemon_prints_and_writes_its_pid_and_stops_by_it(tmp_path: Path) -> None:
    conf = tmp_path / "relay.toml"
    log = tmp_path / "relay.log"
    pid_file = tmp_path / "relay.pid"
    pid = 0
    with EchoServer(banner=b"daemon") as backend:
        conf.write_text(endpoint(backend.addr))
        proc = run_relay(
            ["-d", "--pid-file", str(pid_file), "-c", str(conf)]
            + ["--log-level", "info", "--log-output", str(log)]
        )
        try:
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith("snirelay: running in the background, pid ")
            pid = int(proc.stdout.rsplit(" ", 1)[1])
            # written before the command returned (what systemd's PIDFile= expects)
            assert pid_file.read_text() == f"{pid}\n"
            assert alive(pid)
            text: str = wait_until(
                lambda: log.read_text() if "listening on" in log.read_text() else None,
                20,
                "the daemon listens",
                ignore=(FileNotFoundError,),
            )
            port = int(text.split("listening on 127.0.0.1:", 1)[1].split(" ", 1)[0])
            assert banner_at(port) == b"daemon"
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not alive(pid), 30, "the daemon exits on SIGTERM")
        finally:
            if pid and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert not pid_file.exists()  # removed at the clean stop
    assert "stopped" in log.read_text()


def test_unwritable_pid_file_fails_before_detaching(tmp_path: Path) -> None:
    where = tmp_path / "missing" / "relay.pid"
    proc = run_relay(["-d", "--pid-file", str(where), "-l", "127.0.0.1:0", "-r", "127.0.0.1:9"])
    assert proc.returncode == 2
    assert (
        proc.stderr == f"snirelay: --pid-file: {where}: cannot write: No such file or directory\n"
    )
    assert proc.stdout == ""
