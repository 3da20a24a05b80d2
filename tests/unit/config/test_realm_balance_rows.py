"""realm's reading of `balance`, its retired keys, "nothing to run", and every error at
once: one row per behaviour of issue 13's table, checked through the real loader.

realm's rules (realm_lb/src/balancer.rs, realm 2.9.4): no `balance` is strategy "off"
(every connection to `remote`); "S: w1, ..., wn" balances over the first n remotes
(n <= 1: `remote` only); "off: ..." is valid and ignores weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from snirelay.config.load import load_config
from snirelay.config.model import Balance, Config, ConfigError
from snirelay.config.notes import MAX_ERRORS, ConfigErrors, error_lines

HEAD = '[[endpoints]]\nlisten = "127.0.0.1:5000"\nremote = "127.0.0.1:6000"\n'
THREE = HEAD + 'extra_remotes = ["127.0.0.1:6001", "127.0.0.1:6002"]\n'


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(str(path))


# (balance line, Balance, remotes in use, warned about the unused ones)
BALANCE_ROWS = [
    ("", Balance("off", (1,)), 1, True),  # realm's default strategy is off
    ('balance = "off"\n', Balance("off", (1,)), 1, True),
    ('balance = "off: 1, 2"\n', Balance("off", (1,)), 1, True),  # valid in realm
    ('balance = "roundrobin: 1"\n', Balance("roundrobin", (1,)), 1, True),
    ('balance = "roundrobin:"\n', Balance("roundrobin", (1,)), 1, True),
    ('balance = "roundrobin: 2, 1"\n', Balance("roundrobin", (2, 1)), 2, True),
    ('balance = "roundrobin: 1, 1, 1"\n', Balance("roundrobin", (1, 1, 1)), 3, False),
    ('balance = "iphash: 1, 2, 3"\n', Balance("iphash", (1, 2, 3)), 3, False),
    ('balance = "roundrobin"\n', Balance("roundrobin", (1, 1, 1)), 3, False),  # snirelay
]


@pytest.mark.parametrize(("line", "want", "used", "warned"), BALANCE_ROWS)
def test_balance_as_realm_reads_it(
    tmp_path: Path, line: str, want: Balance, used: int, warned: bool
) -> None:
    config = load(tmp_path, THREE + line)
    up = config.endpoints[0].upstream
    assert up.balance == want
    assert len(up.balance.weights) == used
    assert len(up.remotes) == 3  # every remote is kept (a hook may pick any)
    unused = [w for w in config.warnings if "never used" in w]
    assert bool(unused) == warned, config.warnings
    if warned:
        assert unused[0].startswith("endpoints[0].extra_remotes")
        assert '"roundrobin: 1, 1, 1"' in unused[0]  # the fix, written out


def test_one_remote_has_no_warning(tmp_path: Path) -> None:
    assert load(tmp_path, HEAD).warnings == ()


def test_route_balance_defaults_to_off_and_inherited_ones_warn_once(tmp_path: Path) -> None:
    text = THREE + (
        '[[endpoints.routes]]\nserver_names = ["a.example"]\n'
        '[[endpoints.routes]]\nserver_names = ["b.example"]\nremote = "127.0.0.1:7000"\n'
        'extra_remotes = ["127.0.0.1:7001"]\n'
    )
    config = load(tmp_path, text)
    a, b = config.endpoints[0].routes
    assert a.upstream.balance == Balance("off", (1,))
    assert b.upstream.balance == Balance("off", (1,))
    places = [w.split(":")[0] for w in config.warnings]
    assert places == ["endpoints[0].extra_remotes", "endpoints[0].routes[1].extra_remotes"]


def test_more_weights_than_remotes_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^endpoints\[0\]\.balance: 4 weights for 3 remote"):
        load(tmp_path, THREE + 'balance = "roundrobin: 1, 1, 1, 1"\n')


@pytest.mark.parametrize("key", ["zero_copy", "fast_open"])
@pytest.mark.parametrize("level", ["global", "endpoint", "route"])
def test_retired_keys_are_accepted_with_a_warning(tmp_path: Path, key: str, level: str) -> None:
    text = {
        "global": f"[network]\n{key} = true\n" + HEAD,
        "endpoint": HEAD + f"network = {{ {key} = true }}\n",
        "route": HEAD
        + f'[[endpoints.routes]]\nserver_names = ["a.b"]\nnetwork = {{ {key} = true }}\n',
    }[level]
    config = load(tmp_path, text)
    place = {"global": "network", "endpoint": "endpoints[0].network"}.get(
        level, "endpoints[0].routes[0].network"
    )
    assert [w for w in config.warnings if key in w] == [
        w for w in config.warnings if w.startswith(f"{place}.{key}: does nothing")
    ]
    assert any(w.startswith(f"{place}.{key}: does nothing") for w in config.warnings)


def test_a_key_unknown_to_realm_too_stays_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"network\.zero_cpy: unknown key \(did you mean 'zero_copy'"
    ):
        load(tmp_path, "[network]\nzero_cpy = true\n" + HEAD)


def test_tcp_off_and_udp_off_is_nothing_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^endpoints\[0\]\.network\.no_tcp: nothing to run"):
        load(tmp_path, "[network]\nno_tcp = true\n" + HEAD)
    two = HEAD + '[[endpoints]]\nlisten = "127.0.0.1:5001"\nremote = "127.0.0.1:6000"\n'
    two += "network = { no_tcp = true }\n"
    config = load(tmp_path, two)
    assert any(
        w.startswith("endpoints[1].network.no_tcp: the endpoint carries nothing")
        for w in config.warnings
    )


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        '[log]\nlevel = "loud"\n[dns]\nmode = "x"\n'
        '[[endpoints]]\nlisten = "127.0.0.1:5000"\nremote = "h:1"\nbalance = "rr"\n'
        '[[endpoints]]\nlisten = "127.0.0.1:5001"\n'
        '[[endpoints]]\nlisten = "127.0.0.1:5002"\nremote = "h:1"\n'
        '[[endpoints.routes]]\nserver_names = ["a.b"]\nlisen = 1\n'
        '[[endpoints.routes]]\nwhen = "sometimes"\n'
    )
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path, text)
    places = [line.split(":")[0] for line in error_lines(info.value)]
    assert places == [
        "log.level",
        "dns.mode",
        "endpoints[0].balance",
        "endpoints[1].remote",
        "endpoints[2].routes[0].lisen",
        "endpoints[2].routes[1].when",
    ]
    assert all("\n" not in line for line in error_lines(info.value))


def test_errors_stop_at_a_dozen(tmp_path: Path) -> None:
    bad = '[[endpoints]]\nlisten = "127.0.0.1:5000"\nremote = "h:1"\nbalance = "rr"\n'
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path, bad * 40)
    assert len(error_lines(info.value)) == MAX_ERRORS
