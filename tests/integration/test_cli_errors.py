"""Command-line and start-up errors: exit codes, one line on stderr, no traceback.

Exit 2: a bad configuration (one line naming the place, e.g. "endpoints[1].balance:
..."), an unknown key, a file that does not parse, a usage error. Exit 3: a listen
address that cannot be bound (one line naming the address and the OS error).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from helpers.relay import free_port, run_relay

pytestmark = pytest.mark.integration


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def endpoint(port: int, remote: str, extra: str = "") -> str:
    return f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{remote}"\n{extra}\n'


BAD_TOML = {
    "balance-strategy": (
        endpoint(free_port(), "127.0.0.1:9")
        + endpoint(free_port(), "127.0.0.1:9", 'balance = "rr: 1"'),
        "endpoints[1].balance",
    ),
    "unknown-endpoint-key": (
        endpoint(free_port(), "127.0.0.1:9", "bogus_key = 1"),
        "bogus_key",
    ),
    "unknown-network-key": (
        "[network]\nno_such_option = true\n" + endpoint(free_port(), "127.0.0.1:9"),
        "no_such_option",
    ),
    "bad-listen": (endpoint(0, "127.0.0.1:9").replace("127.0.0.1:0", "nonsense"), "listen"),
    "bad-log-level": (
        '[log]\nlevel = "loud"\n' + endpoint(free_port(), "127.0.0.1:9"),
        "log.level",
    ),
    "toml-syntax": ("[[endpoints]\nlisten = ", ""),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_bad_config_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    text, place = BAD_TOML[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    proc = run_relay(["-c", str(path)])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    err = lines(proc.stderr)
    assert len(err) == 1, proc.stderr
    assert place in err[0], err[0]


def test_bad_json_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        '{"endpoints": [{"listen": "127.0.0.1:PORT", "remote": "127.0.0.1:9", "balance": "rr: 1"}]}'.replace(
            "PORT", str(free_port())
        )
    )
    proc = run_relay(["-c", str(path)])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 1 and "endpoints[0].balance" in err[0], proc.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = run_relay(["-c", str(missing)])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 1 and "nope.toml" in err[0], proc.stderr


def test_listen_without_remote_is_a_usage_error() -> None:
    proc = run_relay(["-l", f"127.0.0.1:{free_port()}"])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_listen_address_in_use_exits_3(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        proc = run_relay(["-l", addr, "-r", "127.0.0.1:9"])
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 1, proc.stderr
    assert addr in err[0], err[0]
    assert "in use" in err[0].lower() or "errno 98" in err[0].lower(), err[0]


def test_listen_address_not_local_exits_3() -> None:
    addr = f"192.0.2.1:{free_port()}"  # TEST-NET-1: never assigned to this host
    proc = run_relay(["-l", addr, "-r", "127.0.0.1:9"])
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 1 and addr in err[0], proc.stderr


def test_a_log_that_cannot_be_written_is_one_line_and_the_relay_serves_on(
    tmp_path: Path,
) -> None:
    """/dev/full takes the open and refuses every write: one line on stderr, no
    logging traceback per record, and traffic goes on."""
    from helpers.peers import EchoServer, connect, recv_all
    from helpers.relay import RelayProcess
    from helpers.wait import wait_until
    from integration.test_features import wait_accepting

    with EchoServer(banner=b"hi") as backend:
        config = '[log]\nlevel = "info"\noutput = "/dev/full"\n' + endpoint(
            free_port(), f"127.0.0.1:{backend.port}"
        )
        with RelayProcess(config=config, tmp_path=tmp_path, log_flags=False) as relay:
            relay.spawn()
            wait_until(lambda: "the log cannot be written" in relay.log, 10, "the one line")
            port = int(config.split("127.0.0.1:")[1].split('"')[0])
            wait_accepting(port)
            for _ in range(3):
                with connect(port) as s:
                    s.shutdown(socket.SHUT_WR)
                    assert recv_all(s) == b"hi"
            assert relay.running
        assert "Traceback" not in relay.log
        assert relay.log.count("the log cannot be written") == 1, relay.log
