"""`routing.decide` and `routing.classify`: one decision per kind of first bytes.

Table-driven over every branch of the decision (a complete hello or request, a parse
error of each kind, a timeout with and without bytes), each against a table with a
`not_tls` route and one without, an endpoint with and without a remote of its own;
then properties: whatever the bytes, `classify` + `decide` give an answer and never
raise, and an answer that connects always names an upstream with a remote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snirelay.config.model import Addr, Route, Upstream
from snirelay.routing import RouteTable, SniffTimeout, classify, decide
from snirelay.wire.errors import ProtocolError
from snirelay.wire.sniff import Sniffed, sniff

VEC = Path(__file__).resolve().parents[1] / "vectors" / "clienthello"


def route(i: int, *names: str, when: str | None = None, remote: bool = True) -> Route:
    remotes = (Addr("127.0.0.1", 1000 + i),) if remote else ()
    return Route(
        place=f"endpoints[0].routes[{i}]",
        upstream=Upstream(remotes=remotes),
        server_names=names,
        when=when,
    )


FULL = RouteTable(
    [
        route(0, "emby.example.com"),
        route(1, "*.example.org"),
        route(2, "~^media[0-9]+\\.example\\.net$"),
        route(3, when="no_sni"),
        route(4, when="ip_sni"),
        route(5, when="not_tls"),
    ]
)
NAMES_ONLY = RouteTable([route(0, "emby.example.com")])


def seen(data: bytes) -> Sniffed:
    res = sniff(data)
    assert isinstance(res, Sniffed)
    return res


HELLO = seen((VEC / "curl_sni_http2.bin").read_bytes())  # SNI emby.example.com
NO_SNI = seen((VEC / "curl_ip_http11.bin").read_bytes())
IP_SNI = seen((VEC / "variant_sni_ipv4_literal__curl_sni_http2.bin").read_bytes())
SSLV2 = seen((VEC / "variant_sslv2_compat_hello.bin").read_bytes())
HTTP_KNOWN = seen(b"GET / HTTP/1.1\r\nHost: emby.example.com\r\n\r\n")
HTTP_UNKNOWN = seen(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
HTTP_NO_HOST = seen(b"GET / HTTP/1.0\r\n\r\n")
OTHER_SNI = seen((VEC / "openssl_s_client_sni.bin").read_bytes().replace(b"emby", b"zzzz"))

NOT_TLS = ProtocolError("not-tls", "SSH-2.0 is not TLS")
MALFORMED = ProtocolError("malformed", "bad extensions length")
TOO_LARGE = ProtocolError("too-large", "first bytes exceed 1024")
ODD = ProtocolError("something-new", "a kind a later parser may add")

R = "endpoints[0].routes[{}]".format
NOTHING = "client sent nothing before network.sniff_timeout"
PARTIAL = "client sent an incomplete first message"

# (what was seen, table, has_default) -> (route place, close, hint or a part of it, kind)
CASES: list[tuple[str, object, RouteTable, bool, tuple[str, str | None, str | None, str]]] = [
    ("hello exact", HELLO, FULL, True, (R(0), None, None, "tls")),
    ("hello exact, no default", HELLO, NAMES_ONLY, False, (R(0), None, None, "tls")),
    ("hello miss", OTHER_SNI, FULL, True, ("default", None, "matched no route", "tls")),
    ("hello miss, no default", OTHER_SNI, FULL, False, ("default", "no-route", "zzzz", "tls")),
    ("no sni", NO_SNI, FULL, True, (R(3), None, None, "tls")),
    ("no sni, no when", NO_SNI, NAMES_ONLY, True, ("default", None, "no server name", "tls")),
    ("ip sni", IP_SNI, FULL, True, (R(4), None, None, "tls")),
    ("ip sni, no when", IP_SNI, NAMES_ONLY, False, ("default", "no-route", "192.0.2.10", "tls")),
    ("sslv2", SSLV2, FULL, True, (R(3), None, None, "sslv2")),
    ("http known", HTTP_KNOWN, NAMES_ONLY, False, (R(0), None, None, "http")),
    ("http unknown", HTTP_UNKNOWN, FULL, True, (R(5), None, None, "http")),
    ("http unknown, no when", HTTP_UNKNOWN, NAMES_ONLY, True, ("default", None, "other.test", "http")),
    ("http no host", HTTP_NO_HOST, FULL, False, (R(5), None, None, "http")),
    ("http unknown, nowhere", HTTP_UNKNOWN, NAMES_ONLY, False, ("default", "no-route", "not_tls", "http")),
    ("not tls", NOT_TLS, FULL, False, (R(5), None, "not-tls: SSH", "not-tls")),
    ("not tls, no when", NOT_TLS, NAMES_ONLY, True, ("default", None, "not-tls: SSH", "not-tls")),
    ("not tls, nowhere", NOT_TLS, NAMES_ONLY, False, ("default", "no-route", "not-tls: SSH", "not-tls")),
    ("malformed", MALFORMED, FULL, True, (R(5), None, "malformed: bad", "malformed")),
    ("malformed, no when", MALFORMED, NAMES_ONLY, True, ("default", "malformed", "malformed: bad", "malformed")),
    ("too large", TOO_LARGE, FULL, True, (R(5), None, "1024", "too-large")),
    ("too large, no when", TOO_LARGE, NAMES_ONLY, True, ("default", "too-large", "1024", "too-large")),
    ("other kind, no when", ODD, NAMES_ONLY, True, ("default", "something-new", "later", "something-new")),
    ("nothing sent", SniffTimeout(0), FULL, False, (R(5), None, None, "timeout")),
    ("nothing sent, no when", SniffTimeout(0), NAMES_ONLY, True, ("default", "sniff-timeout", NOTHING, "timeout")),
    ("part sent", SniffTimeout(7), FULL, True, ("default", "sniff-timeout", PARTIAL, "timeout")),
    ("part sent, no when", SniffTimeout(7), NAMES_ONLY, False, ("default", "sniff-timeout", PARTIAL, "timeout")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "table", "has_default", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(
    what: Sniffed | ProtocolError | SniffTimeout,
    table: RouteTable,
    has_default: bool,
    want: tuple[str, str | None, str | None, str],
) -> None:
    place, close, hint, kind = want
    d = decide(table, what, has_default=has_default)
    assert (d.place, d.close, d.kind) == (place, close, kind), d
    if hint is None:
        assert d.hint is None, d
    else:
        assert d.hint is not None and hint in d.hint and "\n" not in d.hint, d
    assert d.place == ("default" if d.route is None else d.route.place)


def test_route_without_remote_closes_no_route() -> None:
    """A route that inherits an endpoint's empty remote list cannot connect either."""
    table = RouteTable(
        [route(0, "emby.example.com", remote=False), route(1, when="not_tls", remote=False)]
    )
    d = decide(table, HELLO, has_default=False)
    assert (d.place, d.close) == (R(0), "no-route") and d.hint
    d = decide(table, SniffTimeout(0), has_default=True)
    assert (d.place, d.close) == (R(1), "no-route")


# --- classify: bytes a client sends, then waits ----------------------------------------


def test_classify() -> None:
    raw = (VEC / "curl_sni_http2.bin").read_bytes()
    seen = classify(raw, 65536)
    assert isinstance(seen, Sniffed) and seen.hello is not None and HELLO.hello is not None
    assert (seen.kind, seen.name, seen.hello.size) == (HELLO.kind, HELLO.name, HELLO.hello.size)
    assert classify(b"", 65536) == SniffTimeout(0)
    assert classify(raw[:100], 65536) == SniffTimeout(100)
    assert classify(raw[:3], 65536) == SniffTimeout(3)
    err = classify(b"SSH-2.0-OpenSSH_9.2\r\n", 65536)
    assert isinstance(err, ProtocolError) and err.kind == "not-tls"
    err = classify((VEC / "variant_bad_extensions_length__curl_sni_http2.bin").read_bytes(), 65536)
    assert isinstance(err, ProtocolError) and err.kind == "malformed"


def test_classify_prefix_at_the_cap_is_too_large() -> None:
    """The relay stops buffering at sniff_max_bytes: a prefix that fills it is too large."""
    head = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 2000
    err = classify(head[:1024], 1024)
    assert isinstance(err, ProtocolError) and err.kind == "too-large"
    assert classify(head[:1023], 1024) == SniffTimeout(1023)


@given(st.binary(max_size=600), st.booleans(), st.integers(min_value=16, max_value=700))
def test_any_bytes_get_one_answer(data: bytes, has_default: bool, cap: int) -> None:
    for table in (FULL, NAMES_ONLY):
        d = decide(table, classify(data, cap), has_default=has_default)
        if d.close is None:  # connects: to an upstream that has somewhere to go
            assert has_default if d.route is None else d.route.upstream.remotes
        else:
            assert d.hint, d


@given(st.sampled_from(sorted(p.name for p in VEC.glob("*.bin"))), st.data())
def test_every_vector_and_prefix_gets_one_answer(name: str, data: st.DataObject) -> None:
    raw = (VEC / name).read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    for table in (FULL, NAMES_ONLY):
        d = decide(table, classify(raw[:cut], 65536), has_default=False)
        assert d.kind in ("tls", "sslv2", "http", "not-tls", "malformed", "too-large", "timeout")
