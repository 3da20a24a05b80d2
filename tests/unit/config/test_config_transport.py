"""Transport strings (realm's grammar plus snirelay's options) and the address grammar."""

from __future__ import annotations

import pytest

from snirelay.config.addr import parse_addr, parse_addr_range, parse_through
from snirelay.config.model import Addr, ConfigError, Transport
from snirelay.config.transport import parse_transport
from snirelay.net.sockopt import bind_address
from snirelay.wire.names import host_name, is_host_name

P = "endpoints[0].remote_transport"


def test_realm_forms() -> None:
    t = parse_transport(" tls ; sni=Example.COM ; insecure ", P, "remote")
    assert t == Transport(
        raw=" tls ; sni=Example.COM ; insecure ", tls=True, sni="example.com", insecure=True
    )
    t = parse_transport("ws;host=example.com;path=/chat", P, "remote")
    assert t.ws and not t.tls and t.host == "example.com" and t.path == "/chat"
    t = parse_transport("path=/p;tls;ws;host=h;sni=h", P, "remote")  # order free, ws + tls = wss
    assert t.ws and t.tls and t.sni == "h"
    t = parse_transport("tls;cert=a.pem;key=a.key;ocsp=o.der", "x", "listen")
    assert (t.cert, t.key, t.ocsp) == ("a.pem", "a.key", "o.der")
    t = parse_transport("tls;servername=relay.example", "x", "listen")
    assert t.servername == "relay.example"
    t = parse_transport("tls;0rtt;alpn=h2, http/1.1;", P, "remote")
    assert t.zero_rtt and t.alpn == ("h2", "http/1.1")


def test_snirelay_additions() -> None:
    t = parse_transport(
        "tls;sni=$sni;ca=/etc/ca.pem;client_cert=c.pem;client_key=c.key", P, "remote"
    )
    assert t.sni == "$sni" and t.ca == "/etc/ca.pem"
    assert (t.client_cert, t.client_key) == ("c.pem", "c.key")
    t = parse_transport("tls;cert=a;key=b;alpn=h2", "x", "listen")  # server-side ALPN
    assert t.alpn == ("h2",)
    assert parse_transport("", P, "remote") == Transport(raw="")


@pytest.mark.parametrize(
    "raw,side,needle",
    [
        ("tls;sn=x", "remote", "unknown option 'sn' (did you mean 'sni'?)"),
        ("tsl", "remote", "unknown option 'tsl' (did you mean 'tls'?)"),
        ("tls;tls", "remote", "option 'tls' given twice"),
        ("tls=1", "remote", "'tls' is a flag and takes no value"),
        ("tls;sni", "remote", "option 'sni' needs a value"),
        ("tls;sni=", "remote", "option 'sni' needs a value"),
        (
            "tls;cert=a;key=b",
            "remote",
            "'cert' is a listen-side option (use it in listen_transport)",
        ),
        ("tls;servername=a", "remote", "'servername' is a listen-side option"),
        ("tls;ocsp=a", "remote", "'ocsp' is a listen-side option"),
        (
            "tls;cert=a;key=b;sni=x",
            "listen",
            "'sni' is a remote-side option (use it in remote_transport)",
        ),
        ("tls;cert=a;key=b;insecure", "listen", "'insecure' is a remote-side option"),
        ("tls;cert=a;key=b;0rtt", "listen", "'0rtt' is a remote-side option"),
        ("tls;cert=a;key=b;ca=x", "listen", "'ca' is a remote-side option"),
        ("tls;cert=a;key=b;client_cert=x", "listen", "'client_cert' is a remote-side option"),
        ("tls;cert=a", "listen", "'cert' needs 'key' too"),
        ("tls;key=a", "listen", "'key' needs 'cert' too"),
        ("tls;client_cert=a", "remote", "'client_cert' needs 'client_key' too"),
        ("tls;client_key=a", "remote", "'client_key' needs 'client_cert' too"),
        ("sni=a", "remote", "'sni' needs 'tls'"),
        ("tls;host=h", "remote", "'host' needs 'ws'"),
        ("ws;path=/p", "listen", "'ws' needs host=... too"),
        ("ws;host=h", "remote", "'ws' needs path=... too"),
        ("ws;host=h;path=p", "remote", "path= must start with '/'"),
        ("tls", "listen", "a TLS listener needs cert=...;key=... or servername=..."),
        ("tls;cert=a;key=b;servername=c", "listen", "give either cert/key or servername"),
        ("tls;insecure;ca=x", "remote", "'insecure' and 'ca' contradict each other"),
        ("tls;sni=bad name", "remote", "is not a valid host name"),
        ("tls;servername=bad name", "listen", "is not a valid host name"),
        ("tls;alpn=h2,,x", "remote", "empty protocol"),
    ],
)
def test_errors(raw: str, side: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_transport(raw, P, side)
    assert str(info.value).startswith(P + ": ")
    assert needle in str(info.value)


def test_bad_side_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_transport("tls", P, "middle")


# ---------------------------------------------------------------- addresses


def test_addresses() -> None:
    assert parse_addr("0.0.0.0:5000", "p") == Addr("0.0.0.0", 5000)
    assert parse_addr("[::]:5000", "p") == Addr("::", 5000)
    assert parse_addr("host:443", "p") == Addr("host", 443)
    assert parse_addr("localhost:80", "p") == Addr("localhost", 80)
    assert parse_addr("127.0.0.1:0", "p", allow_zero=True).port == 0
    assert parse_addr("1.1.1.1", "p", default_port=53) == Addr("1.1.1.1", 53)
    assert parse_addr_range("h:7000-7002", "p") == ("h", [7000, 7001, 7002])
    assert str(Addr("::1", 1)) == "[::1]:1"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ":80",
        "host",
        "host:",
        "host:-1",
        "host:65536",
        "[::1]",
        "[::1]80",
        "::1:80",
        "a b:1",
        "h:1-2-3",
    ],
)
def test_bad_addresses(raw: str) -> None:
    with pytest.raises(ConfigError, match="^p: "):
        parse_addr(raw, "p")


def test_zero_port_only_where_allowed() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_addr("h:0", "p")
    with pytest.raises(ConfigError, match="a port range is not allowed"):
        parse_addr("h:1-2", "p")


def test_host_names() -> None:
    assert is_host_name("a-b.example.com") and is_host_name("x_y.example") and is_host_name("a.")
    assert not is_host_name("-a.example") and not is_host_name("a..b") and not is_host_name("1.2.3")
    assert not is_host_name("a" * 64 + ".x") and not is_host_name("ü.example")
    assert host_name("Emby.Example.COM.") == "emby.example.com"
    assert host_name("bad name") is None


def test_through() -> None:
    # parsed once, at load: the model keeps the address the runtime binds to
    assert parse_through("192.0.2.1", "p") == Addr("192.0.2.1", 0)
    assert parse_through(" 2001:db8::1 ", "p") == Addr("2001:db8::1", 0)
    assert parse_through("[2001:db8::1]:4000", "p") == Addr("2001:db8::1", 4000)
    assert parse_through("192.0.2.1:0", "p") == Addr("192.0.2.1", 0)
    bad = ("example.com", "example.com:1", "1.2.3.4:x", "300.1.1.1", "1.2.3.4:1-3", "[::1]:70000")
    for raw in bad:
        with pytest.raises(ConfigError, match="^p: "):
            parse_through(raw, "p")


def test_runtime_binds_to_the_parsed_through() -> None:
    assert bind_address(None) is None
    assert bind_address(parse_through("[2001:db8::1]:4000", "p")) == ("2001:db8::1", 4000)
    assert bind_address(parse_through("192.0.2.1", "p")) == ("192.0.2.1", 0)


def test_an_ip_as_sni_is_kept_it_means_no_sni_and_the_ip_verified() -> None:
    t = parse_transport("tls;sni=10.0.0.1", "x", "remote")
    assert t.sni == "10.0.0.1"
