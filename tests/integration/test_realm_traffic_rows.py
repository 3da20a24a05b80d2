"""Issue 13's rows where realm and snirelay differed in where traffic goes or what the
start says, checked through the real relay: which backend each client reaches (the
backends greet with their name), what the start prints, what a failing connection's
record says.

- `extra_remotes` and no `balance`: realm's strategy is off, every client reaches
  `remote`; the start warns that the extra remotes are never used.
- `balance = "roundrobin: 1"` with three remotes: realm uses one remote.
- `balance = "off: 1, 1"`: valid, `remote` only.
- a retired key (`network.zero_copy`): the start warns, the relay runs.
- `interface` naming a device that does not exist: a warning at start naming the
  endpoint; each connection fails with the device named in its record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from helpers.peers import EchoServer, connect, recv_all
from helpers.relay import RelayProcess
from integration.test_balance_failover import which_backend

pytestmark = pytest.mark.integration


@pytest.fixture
def backends() -> Iterator[list[EchoServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(EchoServer(banner=f"b{i}\n".encode())) for i in range(3)]


def config(backends: list[EchoServer], extra: str) -> str:
    r = [f'"127.0.0.1:{b.port}"' for b in backends]
    return f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = {r[0]}
extra_remotes = [{r[1]}, {r[2]}]
{extra}
"""


@pytest.mark.parametrize(
    ("balance", "reached", "warned"),
    [
        ("", {"b0"}, True),
        ('balance = "roundrobin: 1"', {"b0"}, True),
        ('balance = "off: 1, 1"', {"b0"}, True),
        ('balance = "roundrobin: 1, 1"', {"b0", "b1"}, True),
        ('balance = "roundrobin: 1, 1, 1"', {"b0", "b1", "b2"}, False),
    ],
)
def test_remotes_in_use_as_realm_picks_them(
    tmp_path: Path, backends: list[EchoServer], balance: str, reached: set[str], warned: bool
) -> None:
    with RelayProcess(config=config(backends, balance), tmp_path=tmp_path) as relay:
        relay.start()
        port = relay.port()
        seen = Counter(which_backend(port) for _ in range(12))
        assert set(seen) == reached
        warning = "endpoints[0].extra_remotes" in relay.log and "never used" in relay.log
        assert warning == warned, relay.log


def test_a_retired_key_is_a_warning_not_an_error(
    tmp_path: Path, backends: list[EchoServer]
) -> None:
    text = "[network]\nzero_copy = true\n" + config(backends, "")
    with RelayProcess(config=text, tmp_path=tmp_path) as relay:
        relay.start()
        assert "snirelay: warning: network.zero_copy: does nothing" in relay.log
        assert which_backend(relay.port()) == "b0"


def test_a_missing_interface_is_named_at_start_and_per_connection(
    tmp_path: Path, backends: list[EchoServer]
) -> None:
    text = config(backends, 'interface = "snirelay-nodev0"')
    with RelayProcess(config=text, tmp_path=tmp_path) as relay:
        relay.start()
        assert (
            "snirelay: warning: endpoints[0].interface: no network device 'snirelay-nodev0'"
            in relay.log
        )
        with connect(relay.port()) as s:
            assert recv_all(s) == b""  # closed: no backend can be reached through it
        (rec,) = relay.wait_records(1)
        assert rec["close"] == "connect-failed", rec
        assert "interface 'snirelay-nodev0': No such device" in str(rec), rec
