"""Every file under examples/ and every realm example fixture loads, so none can rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from snirelay.config.load import load_config
from snirelay.config.model import Addr, Balance

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".toml", ".json"))
REALM = Path(__file__).resolve().parent / "realm_examples"


def test_the_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"forward.toml", "balance.toml", "sni-routing.toml", "legacy-v1.json"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    config = load_config(str(path))
    assert config.endpoints


def test_sni_example_routes() -> None:
    (ep,) = load_config(str(ROOT / "examples" / "sni-routing.toml")).endpoints
    assert [r.when or r.server_names[0] for r in ep.routes] == [
        "emby.example.com",
        "*.example.com",
        "no_sni",
    ]
    assert all(r.upstream.listen_transport is None for r in ep.routes)


def test_sni_rewrite_example_transports() -> None:
    (ep,) = load_config(str(ROOT / "examples" / "sni-rewrite.toml")).endpoints
    term = ep.routes[0].upstream
    assert term.listen_transport is not None and term.listen_transport.cert == "relay.pem"
    assert term.remote_transport is not None and term.remote_transport.sni == "emby.example.com"


def test_legacy_example_expands_ranges() -> None:
    # realm's rule: the flattened listen ports [5000, 7000..7004] pair one to one with
    # the flattened remote ports [6000, 8000..8004]
    eps = load_config(str(ROOT / "examples" / "legacy-v1.json")).endpoints
    assert [(ep.listen, ep.upstream.remotes) for ep in eps] == [
        (Addr("127.0.0.1", lport), (Addr("127.0.0.1", rport),))
        for lport, rport in [(5000, 6000), *((7000 + i, 8000 + i) for i in range(5))]
    ]


# ---------------------------------------------------------------- realm's own examples


def test_realm_basic_toml_and_json_agree() -> None:
    toml = load_config(str(REALM / "basic.toml"))
    assert toml == load_config(str(REALM / "basic.json"))
    assert toml.log.level == "warn" and toml.log.output == "realm.log"
    assert toml.network.use_udp and not toml.network.no_tcp
    assert [ep.upstream.remotes[0] for ep in toml.endpoints] == [
        Addr("1.1.1.1", 443),
        Addr("www.google.com", 443),
    ]


def test_realm_full_example() -> None:
    c = load_config(str(REALM / "full.toml"))
    assert c.dns.mode == "ipv4_then_ipv6" and len(c.dns.nameservers) == 2
    assert c.network.send_proxy and c.network.accept_proxy
    e0, e1, e2, e3 = c.endpoints
    assert e0.upstream.balance == Balance("roundrobin", (4, 2, 1))
    assert e0.upstream.through == Addr("192.0.2.10", 0) and e0.listen_interface == "eth0"
    assert e1.listen == Addr("::", 5001) and e1.upstream.balance == Balance("iphash", (2, 1))
    assert not e1.upstream.network.send_proxy and e1.upstream.network.tcp_timeout == 10
    assert e1.upstream.network.accept_proxy  # the rest comes from [network]
    assert e2.upstream.remote_transport is not None and e2.upstream.remote_transport.insecure
    assert e3.upstream.listen_transport is not None and e3.upstream.listen_transport.ws
    rt = e3.upstream.remote_transport
    assert rt is not None and rt.ws and rt.tls and rt.path == "/chat"


def test_realm_legacy_example() -> None:
    eps = load_config(str(REALM / "legacy.json")).endpoints
    assert len(eps) == 11
    assert eps[0].listen == Addr("0.0.0.0", 5000)
    assert eps[0].upstream.remotes == (Addr("example.com", 443),)
    assert [ep.upstream.remotes[0].port for ep in eps[1:]] == list(range(7000, 7010))
