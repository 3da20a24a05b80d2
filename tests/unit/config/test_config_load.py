"""load_config: every key, every error path, ranges, routes, directories, precedence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from snirelay.config.load import CliOptions, load_config
from snirelay.config.model import Addr, Balance, Config, ConfigError

Load = Callable[..., Config]  # load(text, cli=None, name="c.toml") -> Config

EP = '[[endpoints]]\nlisten = "127.0.0.1:5000"\nremote = "127.0.0.1:6000"\n'


@pytest.fixture
def load(tmp_path: Path) -> Load:
    def do(text: str, cli: CliOptions | None = None, name: str = "c.toml") -> Config:
        path = tmp_path / name
        path.write_text(text)
        return load_config(str(path), cli)

    return do


def err(load: Load, text: str, cli: CliOptions | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, cli)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- happy paths


def test_minimal_defaults(load: Load) -> None:
    c = load(EP)
    (ep,) = c.endpoints
    assert ep.place == "endpoints[0]"
    assert ep.listen == Addr("127.0.0.1", 5000)
    assert ep.upstream.remotes == (Addr("127.0.0.1", 6000),)
    assert ep.upstream.balance == Balance("off", (1,))
    assert ep.upstream.max_fails == 1 and ep.upstream.fail_timeout == 10
    assert c.log.level == "off" and c.log.format == "text"
    assert c.workers == 1 and c.api is None and c.pipe_pages == 16 and not c.daemon
    assert ep.upstream.network.tcp_idle_timeout == 300
    assert ep.upstream.network.sniff_timeout == 10
    assert ep.upstream.network.sniff_max_bytes == 65536


def test_every_global_key(load: Load) -> None:
    c = load(
        """
workers = 3
drain_timeout = 5
[log]
level = "DEBUG"
output = "/tmp/x.log"
format = "json"
[dns]
mode = "ipv6_only"
protocol = "udp"
nameservers = ["1.1.1.1", "[2606:4700::1111]:5353"]
min_ttl = 1
max_ttl = 2
cache_size = 0
[network]
no_tcp = true
use_udp = true
ipv6_only = true
tcp_timeout = 1.5
udp_timeout = 2
tcp_keepalive = 0
tcp_keepalive_probe = 9
send_mptcp = true
accept_mptcp = true
send_proxy = true
send_proxy_version = 1
accept_proxy = true
accept_proxy_timeout = 3
tcp_idle_timeout = 0
sniff_timeout = 0.5
sniff_max_bytes = 4096
[api]
listen = "127.0.0.1:9090"
token = "s3cret"
"""
        + EP
    )
    assert c.workers == 3 and c.drain_timeout == 5
    assert (c.log.level, c.log.output, c.log.format) == ("debug", "/tmp/x.log", "json")
    assert c.dns.mode == "ipv6_only" and c.dns.protocol == "udp"
    assert c.dns.nameservers == (Addr("1.1.1.1", 53), Addr("2606:4700::1111", 5353))
    assert (c.dns.min_ttl, c.dns.max_ttl, c.dns.cache_size) == (1, 2, 0)
    n = c.network
    assert n.no_tcp and n.use_udp and n.ipv6_only and n.send_mptcp and n.accept_mptcp
    assert n.send_proxy and n.accept_proxy and n.send_proxy_version == 1
    assert (n.tcp_timeout, n.udp_timeout, n.tcp_keepalive, n.tcp_keepalive_probe) == (1.5, 2, 0, 9)
    assert (n.accept_proxy_timeout, n.tcp_idle_timeout, n.sniff_timeout) == (3, 0, 0.5)
    assert n.sniff_max_bytes == 4096
    assert c.endpoints[0].upstream.network == n
    assert c.api is not None and c.api.listen == Addr("127.0.0.1", 9090) and c.api.token == "s3cret"


def test_the_api_listens_on_loopback_by_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\n[[endpoints]]\nlisten = "127.0.0.1:1"\nremote = "h:1"\n')
    c = load_config(str(path))
    assert c.api is not None and c.api.listen == Addr("127.0.0.1", 9090) and c.api.token is None


def test_every_endpoint_key(load: Load) -> None:
    c = load(
        """
[[endpoints]]
listen = "[::1]:5000"
remote = "backend.example:443"
extra_remotes = ["10.0.0.2:443", "[2001:db8::1]:443"]
balance = "iphash: 3"
through = "192.0.2.10:0"
interface = "eth1"
listen_interface = "eth0"
listen_transport = "tls;cert=a.pem;key=a.key;alpn=h2,http/1.1"
remote_transport = "tls;sni=$sni;ca=ca.pem;client_cert=c.pem;client_key=c.key;0rtt"
max_fails = 3
fail_timeout = 0
network = { tcp_timeout = 2, sniff_max_bytes = 100 }
"""
    )
    (ep,) = c.endpoints
    u = ep.upstream
    assert ep.listen == Addr("::1", 5000) and ep.listen_interface == "eth0"
    assert u.remotes == (
        Addr("backend.example", 443),
        Addr("10.0.0.2", 443),
        Addr("2001:db8::1", 443),
    )
    assert u.balance == Balance("iphash", (3,))  # realm: one weight, one remote in use
    assert u.through == Addr("192.0.2.10", 0) and u.interface == "eth1"
    assert u.max_fails == 3 and u.fail_timeout == 0
    assert u.listen_transport is not None and u.listen_transport.alpn == ("h2", "http/1.1")
    assert u.remote_transport is not None and u.remote_transport.sni == "$sni"
    assert u.remote_transport.zero_rtt and u.remote_transport.client_key == "c.key"
    assert u.network.tcp_timeout == 2 and u.network.sniff_max_bytes == 100
    assert c.network.tcp_timeout == 5  # the global one is untouched


def test_json_detected_by_content_not_extension(load: Load) -> None:
    data = {"endpoints": [{"listen": "127.0.0.1:1", "remote": "127.0.0.1:2"}]}
    c = load(json.dumps(data), name="relay.conf")
    assert c.endpoints[0].listen.port == 1
    c2 = load(EP, name="relay.json")  # TOML content in a .json file
    assert c2.endpoints[0].listen.port == 5000


def test_empty_transport_string_is_none(load: Load) -> None:
    c = load(EP + 'remote_transport = ""\n')
    assert c.endpoints[0].upstream.remote_transport is None


def test_balance_forms(load: Load) -> None:
    extra = 'extra_remotes = ["127.0.0.1:6001", "127.0.0.1:6002"]\n'
    for text, want in [
        ("roundrobin", Balance("roundrobin", (1, 1, 1))),
        ("iphash", Balance("iphash", (1, 1, 1))),
        ("roundrobin: 4, 2, 1", Balance("roundrobin", (4, 2, 1))),
        ("iphash: 2,1", Balance("iphash", (2, 1))),
    ]:
        c = load(EP + extra + f'balance = "{text}"\n')
        assert c.endpoints[0].upstream.balance == want, text


# ---------------------------------------------------------------- port ranges


def test_port_range_expands_pairwise(load: Load) -> None:
    c = load('[[endpoints]]\nlisten = "127.0.0.1:7000-7009"\nremote = "h.example:8000-8009"\n')
    assert len(c.endpoints) == 10
    for i, ep in enumerate(c.endpoints):
        assert ep.place == "endpoints[0]"
        assert ep.listen.port == 7000 + i
        assert ep.upstream.remotes == (Addr("h.example", 8000 + i),)


def test_port_range_with_single_remote_port(load: Load) -> None:
    c = load('[[endpoints]]\nlisten = "127.0.0.1:7000-7002"\nremote = "h.example:443"\n')
    assert [ep.upstream.remotes[0].port for ep in c.endpoints] == [443, 443, 443]


@pytest.mark.parametrize(
    "listen,remote,needle",
    [
        ("127.0.0.1:7000-7009", "h:8000-8008", "has 9 ports, the listen range has 10"),
        ("127.0.0.1:7000", "h:8000-8001", "needs a listen port range"),
        ("127.0.0.1:7009-7000", "h:1", "empty port range"),
        ("127.0.0.1:70000", "h:1", "out of range"),
        ("127.0.0.1:5000", "h:0", "out of range"),
    ],
)
def test_bad_ranges(load: Load, listen: str, remote: str, needle: str) -> None:
    msg = err(load, f'[[endpoints]]\nlisten = "{listen}"\nremote = "{remote}"\n')
    assert msg.startswith("endpoints[0].")
    assert needle in msg


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            '[[endpoints]]\nlisen = "127.0.0.1:1"\nremote = "h:1"\n',
            "endpoints[0].lisen: unknown key (did you mean 'listen'?)",
        ),
        (
            "[network]\ntcp_timout = 1\n" + EP,
            "network.tcp_timout: unknown key (did you mean 'tcp_timeout'?)",
        ),
        ("[log]\nlevl = 'x'\n" + EP, "log.levl: unknown key (did you mean 'level'?)"),
        ("[dns]\nbogus = 1\n" + EP, "dns.bogus: unknown key"),
        ("[api]\nlisten = '127.0.0.1:1'\ntokn = 'x'\n" + EP, "api.tokn: unknown key"),
        ("colour = 1\n" + EP, "colour: unknown key"),
        (EP + "network = { nope = 1 }\n", "endpoints[0].network.nope: unknown key"),
    ],
)
def test_unknown_keys(load: Load, text: str, expected: str) -> None:
    assert err(load, text).startswith(expected)


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "[network]\ntcp_timeout = '5'\n" + EP,
            "network.tcp_timeout: expected a number of seconds, got a string",
        ),
        (
            "[network]\nuse_udp = 1\n" + EP,
            "network.use_udp: expected a boolean (true or false), got an integer",
        ),
        (
            "[network]\ntcp_keepalive_probe = 1.5\n" + EP,
            "network.tcp_keepalive_probe: expected an integer, got a float",
        ),
        (
            "[network]\ntcp_timeout = true\n" + EP,
            "network.tcp_timeout: expected a number of seconds, got a boolean",
        ),
        ("[network]\ntcp_timeout = -1\n" + EP, "network.tcp_timeout: must be >= 0"),
        ("[network]\nsend_proxy_version = 3\n" + EP, "network.send_proxy_version: must be <= 2"),
        ("[network]\nsniff_timeout = 0\n" + EP, "network.sniff_timeout: must be > 0"),
        ("[log]\nlevel = 'loud'\n" + EP, "log.level: unknown value 'loud'"),
        ("[log]\nformat = 'xml'\n" + EP, "log.format: unknown value 'xml'"),
        ("[dns]\nmode = 'ipv4'\n" + EP, "dns.mode: unknown value 'ipv4'"),
        ("[dns]\nprotocol = 'quic'\n" + EP, "dns.protocol: unknown value"),
        ("[dns]\nnameservers = 'x'\n" + EP, "dns.nameservers: expected an array of strings"),
        ("[dns]\nnameservers = [1]\n" + EP, "dns.nameservers[0]: expected a string"),
        ("[dns]\nnameservers = ['dns.google:53']\n" + EP, "dns.nameservers[0]:"),
        ("[dns]\nmin_ttl = 10\nmax_ttl = 5\n" + EP, "dns.min_ttl:"),
        ("[dns]\ncache_size = -1\n" + EP, "dns.cache_size: must be >= 0"),
        ("network = 1\n" + EP, "network: expected a table, got an integer"),
        ("workers = 0\n" + EP, "workers: must be >= 1"),
        ("workers = '2'\n" + EP, "workers: expected an integer"),
        ("[api]\nlisten = 'nowhere'\n" + EP, "api.listen: invalid address"),
        ("endpoints = 1\n", "endpoints: expected an array of tables"),
        ("endpoints = [1]\n", "endpoints[0]: expected a table"),
        ('[[endpoints]]\nremote = "h:1"\n', "endpoints[0].listen: missing"),
        ('[[endpoints]]\nlisten = "127.0.0.1:1"\n', "endpoints[0].remote: missing"),
        (
            '[[endpoints]]\nlisten = 5000\nremote = "h:1"\n',
            "endpoints[0].listen: expected a string, got an integer",
        ),
        (
            '[[endpoints]]\nlisten = "5000"\nremote = "h:1"\n',
            "endpoints[0].listen: invalid address '5000'",
        ),
        (
            '[[endpoints]]\nlisten = "::1:5000"\nremote = "h:1"\n',
            "endpoints[0].listen: invalid address",
        ),
        (
            '[[endpoints]]\nlisten = "[1.2.3.4]:5000"\nremote = "h:1"\n',
            "endpoints[0].listen: invalid address '[1.2.3.4]:5000': '1.2.3.4' is not an IPv6 address",
        ),
        (
            '[[endpoints]]\nlisten = "bad host!:5000"\nremote = "h:1"\n',
            "endpoints[0].listen: invalid address 'bad host!:5000': 'bad host!' is not an IP or a host name",
        ),
        (
            '[[endpoints]]\nlisten = "127.0.0.1:x"\nremote = "h:1"\n',
            "endpoints[0].listen: invalid port",
        ),
        (
            EP + 'extra_remotes = "h:1"\n',
            "endpoints[0].extra_remotes: expected an array of strings",
        ),
        (EP + 'extra_remotes = ["h"]\n', "endpoints[0].extra_remotes[0]: invalid address"),
        (EP + 'through = "example.com"\n', "endpoints[0].through: invalid source address"),
        (EP + 'through = "1.2.3.4:99999"\n', "endpoints[0].through:"),
        (EP + "max_fails = 0\n", "endpoints[0].max_fails: must be >= 1"),
        (EP + "fail_timeout = -2\n", "endpoints[0].fail_timeout: must be >= 0"),
        (EP + 'interface = ""\n', "endpoints[0].interface: must not be empty"),
        (EP + "remote_transport = 1\n", "endpoints[0].remote_transport: expected a string"),
        (
            EP + 'remote_transport = "tls;sn=x"\n',
            "endpoints[0].remote_transport: unknown option 'sn' (did you mean 'sni'?)",
        ),
        (
            EP + 'listen_transport = "tls;sni=x"\n',
            "endpoints[0].listen_transport: 'sni' is a remote-side option",
        ),
        (
            EP + "[[endpoints]]\nlisten = '127.0.0.1:5000'\nremote = 'h:1'\n",
            "endpoints[1].listen: 127.0.0.1:5000 is already used by endpoints[0]",
        ),
    ],
)
def test_errors_name_the_place(load: Load, text: str, expected: str) -> None:
    msg = err(load, text)
    assert msg.startswith(expected), msg


@pytest.mark.parametrize(
    "balance,expected",
    [
        ("rr", "endpoints[0].balance: unknown strategy 'rr' (expected off, roundrobin, iphash)"),
        ("roundrobin: 1, 2, 3", "endpoints[0].balance: 3 weights for 2 remote(s)"),
        ("roundrobin: 0", "endpoints[0].balance: weight '0' is not a positive integer"),
        ("iphash: a", "endpoints[0].balance: weight 'a' is not a positive integer"),
        ("roundrobin: -1", "endpoints[0].balance: weight '-1'"),
    ],
)
def test_bad_balance(load: Load, balance: str, expected: str) -> None:
    text = EP + f'extra_remotes = ["127.0.0.1:7"]\nbalance = "{balance}"\n'
    assert err(load, text).startswith(expected)


def test_issue_example_error_on_second_endpoint(load: Load) -> None:
    text = EP + '[[endpoints]]\nlisten = "127.0.0.1:5001"\nremote = "h:1"\nbalance = "rr: 1"\n'
    assert err(load, text) == (
        "endpoints[1].balance: unknown strategy 'rr' (expected off, roundrobin, iphash)"
    )


def test_syntax_errors_and_missing_files(load: Load, tmp_path: Path) -> None:
    assert err(load, "").endswith(
        "c.toml: no endpoints (give -l/-r, or [[endpoints]] in the config)"
    )
    assert "invalid TOML" in err(load, "[[endpoints]\nlisten = ")
    assert "invalid JSON" in err(load, '{"endpoints": [')
    err(load, "[1]")  # refused in one line; what it says: test_json_array_at_the_top_is_named
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "bin.toml"))


def test_json_array_at_the_top_is_named(load: Load) -> None:
    with pytest.raises(ConfigError) as info:
        load("[1]", name="c.json")
    assert str(info.value).endswith("c.json: expected a JSON object at the top, not an array")


# ---------------------------------------------------------------- routes

ROUTED = """
[[endpoints]]
listen = "127.0.0.1:443"
remote = "10.0.0.9:443"
through = "192.0.2.1"
max_fails = 4
network = { tcp_timeout = 9 }

  [[endpoints.routes]]
  server_names = ["Emby.Example.COM.", "*.Example.org", "~^media[0-9]+\\\\.example\\\\.org$"]
  remote = "10.0.0.2:8920"

  [[endpoints.routes]]
  server_names = ["relay.example.com"]
  listen_transport = "tls;cert=relay.pem;key=relay.key"
  remote = "10.0.0.3:443"
  extra_remotes = ["10.0.0.4:443"]
  balance = "roundrobin: 2, 1"
  remote_transport = "tls;sni=emby.example.com;ca=ca.pem"
  network = { tcp_keepalive = 1 }
  interface = "lo"
  fail_timeout = 3

  [[endpoints.routes]]
  when = "no_sni"
"""


def test_routes_and_fallbacks(load: Load) -> None:
    (ep,) = load(ROUTED).endpoints
    r0, r1, r2 = ep.routes
    assert r0.place == "endpoints[0].routes[0]"
    assert r0.server_names == (
        "emby.example.com",
        "*.example.org",
        "~^media[0-9]+\\.example\\.org$",
    )
    assert r0.upstream.remotes == (Addr("10.0.0.2", 8920),)
    assert r0.upstream.through == Addr("192.0.2.1", 0) and r0.upstream.max_fails == 4
    assert r0.upstream.network.tcp_timeout == 9  # the endpoint's network
    assert r1.upstream.remotes == (Addr("10.0.0.3", 443), Addr("10.0.0.4", 443))
    assert r1.upstream.balance == Balance("roundrobin", (2, 1))
    assert r1.upstream.listen_transport is not None and r1.upstream.listen_transport.tls
    assert r1.upstream.network.tcp_keepalive == 1 and r1.upstream.network.tcp_timeout == 9
    assert r1.upstream.interface == "lo" and r1.upstream.fail_timeout == 3
    assert r1.upstream.max_fails == 4
    assert r2.when == "no_sni" and r2.server_names == ()
    assert r2.upstream.remotes == ep.upstream.remotes  # falls back to the endpoint's


def test_route_inherits_endpoint_balance_without_own_remote(load: Load) -> None:
    text = EP + 'extra_remotes = ["127.0.0.1:6001"]\nbalance = "iphash: 5, 1"\n'
    text += '[[endpoints.routes]]\nserver_names = ["a.example"]\n'
    (ep,) = load(text).endpoints
    assert ep.routes[0].upstream.balance == Balance("iphash", (5, 1))
    assert ep.routes[0].upstream.remotes == ep.upstream.remotes


def test_endpoint_with_routes_may_omit_remote(load: Load) -> None:
    text = '[[endpoints]]\nlisten = "127.0.0.1:1"\n[[endpoints.routes]]\nserver_names = ["a.b"]\nremote = "h:1"\n'
    (ep,) = load(text).endpoints
    assert ep.upstream.remotes == () and ep.upstream.balance.weights == ()


def test_route_with_port_ranges(load: Load) -> None:
    text = '[[endpoints]]\nlisten = "127.0.0.1:7000-7001"\n[[endpoints.routes]]\nserver_names = ["a.b"]\nremote = "h:8000-8001"\n'
    eps = load(text).endpoints
    assert [ep.routes[0].upstream.remotes[0].port for ep in eps] == [8000, 8001]


ROUTE_HEAD = '[[endpoints]]\nlisten = "127.0.0.1:1"\nremote = "h:1"\n'


@pytest.mark.parametrize(
    "routes,expected",
    [
        (
            '[[endpoints.routes]]\nremote = "h:2"\n',
            "endpoints[0].routes[0]: needs 'server_names' or 'when'",
        ),
        (
            '[[endpoints.routes]]\nwhen = "no_sni"\nserver_names = ["a.b"]\n',
            "endpoints[0].routes[0]: has both",
        ),
        (
            '[[endpoints.routes]]\nwhen = "sometimes"\n',
            "endpoints[0].routes[0].when: unknown value 'sometimes'",
        ),
        (
            "[[endpoints.routes]]\nserver_names = []\n",
            "endpoints[0].routes[0].server_names: must not be empty",
        ),
        (
            '[[endpoints.routes]]\nserver_names = "a.b"\n',
            "endpoints[0].routes[0].server_names: expected an array",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["ok.example", "~[a-"]\n',
            "endpoints[0].routes[0].server_names[1]: invalid regex '[a-'",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["bad_name!"]\n',
            "endpoints[0].routes[0].server_names[0]: 'bad_name!' is not a valid host name",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["*."]\n',
            "endpoints[0].routes[0].server_names[0]: invalid wildcard",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["10.0.0.1"]\n',
            "endpoints[0].routes[0].server_names[0]: '10.0.0.1' is an IP address",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\n[[endpoints.routes]]\nserver_names = ["x.y", "A.B."]\n',
            "endpoints[0].routes[1].server_names[1]: 'a.b' is already listed in endpoints[0].routes[0].server_names[0]",
        ),
        (
            '[[endpoints.routes]]\nwhen = "not_tls"\n[[endpoints.routes]]\nwhen = "not_tls"\n',
            "endpoints[0].routes[1].when: 'not_tls' is already handled by endpoints[0].routes[0]",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\nlisen = 1\n',
            "endpoints[0].routes[0].lisen: unknown key",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\nlisten = "x:1"\n',
            "endpoints[0].routes[0].listen: unknown key",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\nextra_remotes = ["h:3"]\n',
            "endpoints[0].routes[0].extra_remotes: needs 'remote'",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\nbalance = "rr"\n',
            "endpoints[0].routes[0].balance: unknown strategy 'rr'",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\nnetwork = { x = 1 }\n',
            "endpoints[0].routes[0].network.x: unknown key",
        ),
        (
            '[[endpoints.routes]]\nserver_names = ["a.b"]\nremote_transport = "tls;cert=x"\n',
            "endpoints[0].routes[0].remote_transport:",
        ),
        ("routes = 3\n", "endpoints[0].routes: expected an array of tables"),
    ],
)
def test_route_errors(load: Load, routes: str, expected: str) -> None:
    msg = err(load, ROUTE_HEAD + routes)
    assert msg.startswith(expected), msg


def test_route_without_remote_and_no_fallback(load: Load) -> None:
    text = '[[endpoints]]\nlisten = "127.0.0.1:1"\n[[endpoints.routes]]\nserver_names = ["a.b"]\nremote = "h:1"\n'
    text += '[[endpoints.routes]]\nwhen = "no_sni"\n'
    assert err(load, text) == (
        "endpoints[0].routes[1]: no 'remote', and the endpoint has none to fall back to"
    )


def test_same_wildcard_twice_is_an_error_regex_is_not(load: Load) -> None:
    text = ROUTE_HEAD + '[[endpoints.routes]]\nserver_names = ["*.a.b", "~x"]\n'
    text2 = text + '[[endpoints.routes]]\nserver_names = ["~x"]\n'
    assert len(load(text2).endpoints[0].routes) == 2
    assert "already listed" in err(load, text + '[[endpoints.routes]]\nserver_names = ["*.A.B"]\n')


def test_same_name_in_two_endpoints_is_fine(load: Load) -> None:
    r = '[[endpoints.routes]]\nserver_names = ["a.b"]\n'
    text = ROUTE_HEAD + r + ROUTE_HEAD.replace(':1"\nremote', ':2"\nremote') + r
    assert len(load(text).endpoints) == 2


# ---------------------------------------------------------------- directories


def test_directory_merges_sorted_and_skips_dotfiles(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "20-b.toml").write_text('[[endpoints]]\nlisten = "127.0.0.1:2"\nremote = "h:2"\n')
    (d / "10-a.json").write_text(
        json.dumps(
            {"log": {"level": "info"}, "endpoints": [{"listen": "127.0.0.1:1", "remote": "h:1"}]}
        )
    )
    (d / "30-net.toml").write_text("[network]\ntcp_timeout = 7\n")
    (d / ".hidden.toml").write_text("garbage [[[")
    (d / "notes.txt").write_text("ignored")
    c = load_config(str(d))
    assert [ep.place for ep in c.endpoints] == ["10-a.json:endpoints[0]", "20-b.toml:endpoints[0]"]
    assert c.log.level == "info"
    assert all(ep.upstream.network.tcp_timeout == 7 for ep in c.endpoints)


def test_directory_duplicate_global_field(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "a.toml").write_text("[network]\ntcp_timeout = 1\n" + EP)
    (d / "b.toml").write_text("[network]\ntcp_timeout = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(d))
    assert str(info.value) == "network.tcp_timeout: set in both a.toml and b.toml"


def test_directory_errors_name_the_file(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "a.toml").write_text(EP)
    (d / "b.toml").write_text('[log]\nlevel = "x"\n')
    with pytest.raises(ConfigError, match=r"^b\.toml:log\.level: unknown value"):
        load_config(str(d))
    (d / "b.toml").write_text(
        '[[endpoints]]\nlisten = "127.0.0.1:9"\nremote = "h:1"\nbalance = "rr"\n'
    )
    with pytest.raises(ConfigError, match=r"^b\.toml:endpoints\[0\]\.balance: unknown strategy"):
        load_config(str(d))


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no \\*.toml or \\*.json"):
        load_config(str(tmp_path))


# ---------------------------------------------------------------- command line


def test_cli_only() -> None:
    c = load_config(None, CliOptions(listen="127.0.0.1:0", remote="localhost:80", workers=2))
    (ep,) = c.endpoints
    assert ep.place == "command line" and ep.listen == Addr("127.0.0.1", 0)
    assert ep.upstream.remotes == (Addr("localhost", 80),) and c.workers == 2


def test_cli_endpoint_flags() -> None:
    cli = CliOptions(
        listen="127.0.0.1:1",
        remote="h.example:2",
        through="127.0.0.1",
        interface="lo",
        listen_interface="lo",
        listen_transport="tls;servername=relay.example",
        remote_transport="tls;sni=h.example",
    )
    (ep,) = load_config(None, cli).endpoints
    assert ep.upstream.through == Addr("127.0.0.1", 0) and ep.upstream.interface == "lo"
    assert ep.listen_interface == "lo"
    assert ep.upstream.listen_transport is not None
    assert ep.upstream.listen_transport.servername == "relay.example"


def test_cli_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^-r/--remote: missing"):
        load_config(None, CliOptions(listen="127.0.0.1:1"))
    with pytest.raises(ConfigError, match=r"^-l/--listen: missing"):
        load_config(None, CliOptions(remote="h:1", through="127.0.0.1"))
    with pytest.raises(ConfigError, match=r"^-x/--through: applies to the command-line endpoint"):
        load_config(None, CliOptions(through="127.0.0.1"))
    with pytest.raises(ConfigError, match=r"^-r/--remote: invalid address"):
        load_config(None, CliOptions(listen="127.0.0.1:1", remote="h"))
    with pytest.raises(ConfigError, match=r"^-b/--remote-transport: unknown option"):
        load_config(None, CliOptions(listen="127.0.0.1:1", remote="h:1", remote_transport="x"))
    with pytest.raises(ConfigError, match=r"^--log-level: unknown value"):
        load_config(None, CliOptions(listen="127.0.0.1:1", remote="h:1", log_level="loud"))
    with pytest.raises(ConfigError, match=r"^--send-proxy-version: must be <= 2"):
        load_config(
            None, CliOptions(listen="127.0.0.1:1", remote="h:1", network={"send_proxy_version": 3})
        )
    with pytest.raises(ConfigError, match=r"^--dns-servers:"):
        load_config(None, CliOptions(listen="127.0.0.1:1", remote="h:1", dns_servers="x.y:53"))
    with pytest.raises(ConfigError, match="no endpoints"):
        load_config(None, None)


PRECEDENCE = """
[network]
tcp_timeout = 1
tcp_keepalive = 1
udp_timeout = 1
[[endpoints]]
listen = "127.0.0.1:1"
remote = "h:1"
network = { tcp_timeout = 2, tcp_keepalive = 2 }
  [[endpoints.routes]]
  server_names = ["a.b"]
  network = { tcp_keepalive = 4 }
"""


def test_precedence_cli_over_endpoint_over_global(load: Load) -> None:
    c = load(PRECEDENCE)
    n = c.endpoints[0].upstream.network
    assert (n.tcp_timeout, n.tcp_keepalive, n.udp_timeout) == (2, 2, 1)
    rn = c.endpoints[0].routes[0].upstream.network
    assert (rn.tcp_timeout, rn.tcp_keepalive, rn.udp_timeout) == (2, 4, 1)
    cli_net = {"tcp_timeout": 3, "tcp_keepalive": 3, "use_udp": True}
    c = load(PRECEDENCE, CliOptions(network={**cli_net, "send_mptcp": True, "accept_mptcp": True}))
    for n in (
        c.endpoints[0].upstream.network,
        c.endpoints[0].routes[0].upstream.network,
        c.network,
    ):
        assert n.tcp_timeout == 3 and n.tcp_keepalive == 3 and n.use_udp
        assert n.send_mptcp and n.accept_mptcp
    assert c.endpoints[0].upstream.network.udp_timeout == 1


def test_cli_network_is_checked_like_the_file() -> None:
    def cli(**network: object) -> CliOptions:
        return CliOptions(listen="127.0.0.1:1", remote="h:1", network=network)

    with pytest.raises(ConfigError, match=r"^--tcp-timeout: must be >= 0, got -1"):
        load_config(None, cli(tcp_timeout=-1.0))
    with pytest.raises(ConfigError, match=r"^--replay-timeout: must be > 0, got 0"):
        load_config(None, cli(replay_timeout=0.0))
    with pytest.raises(ConfigError, match=r"^-u/--udp: expected a boolean"):
        load_config(None, cli(use_udp="yes"))
    # options without a flag can still be set through CliOptions (e.g. by a test)
    n = load_config(None, cli(sniff_max_bytes=7)).endpoints[0].upstream.network
    assert n.sniff_max_bytes == 7


def test_cli_log_dns_and_process_options(load: Load) -> None:
    text = "workers = 2\n[log]\nlevel = 'info'\n[dns]\nmode = 'ipv4_only'\n" + EP
    cli = CliOptions(
        log_level="debug",
        log_output="stderr",
        log_format="json",
        dns_mode="ipv6_only",
        dns_protocol="tcp",
        dns_servers="127.0.0.1:5353, ::1",
        dns_min_ttl=1,
        dns_max_ttl=2,
        dns_cache_size=3,
        workers=4,
        nofile=1000,
        pipe_page=32,
        daemon=True,
    )
    c = load(text, cli)
    assert (c.log.level, c.log.output, c.log.format) == ("debug", "stderr", "json")
    assert c.dns.mode == "ipv6_only" and c.dns.protocol == "tcp"
    assert c.dns.nameservers == (Addr("127.0.0.1", 5353), Addr("::1", 53))
    assert (c.dns.min_ttl, c.dns.max_ttl, c.dns.cache_size) == (1, 2, 3)
    assert c.workers == 4 and c.nofile == 1000 and c.pipe_pages == 32 and c.daemon
    assert load(text).workers == 2


def test_cli_endpoint_added_to_config_file(load: Load) -> None:
    c = load(EP, CliOptions(listen="127.0.0.1:5001", remote="h:1"))
    assert [ep.place for ep in c.endpoints] == ["endpoints[0]", "command line"]
