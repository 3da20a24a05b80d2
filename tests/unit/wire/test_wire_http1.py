"""HTTP/1 request head reader: Host parsing, incremental behaviour, strictness."""

from __future__ import annotations

import pytest

from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.http1 import HttpRequest, could_be_http, parse_http_request
from unit.wire.wire_vectors import MANIFEST, data_of, http_name


def req(host_line: bytes, target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + host_line + b"Accept: */*\r\n\r\n"


def parse(data: bytes) -> HttpRequest:
    res = parse_http_request(data)
    assert isinstance(res, HttpRequest), res
    return res


def kind(data: bytes, max_size: int = 65536) -> str:
    with pytest.raises(ProtocolError) as e:
        parse_http_request(data, max_size)
    return e.value.kind


@pytest.mark.parametrize(
    "host,name,is_ip",
    [
        (b"emby.example.com", "emby.example.com", False),
        (b"Emby.Example.COM", "emby.example.com", False),
        (b"emby.example.com.", "emby.example.com", False),
        (b"emby.example.com:8096", "emby.example.com", False),
        (b"emby.example.com:", "emby.example.com", False),
        (b"127.0.0.1:80", "127.0.0.1", True),
        (b"[::1]:80", "::1", True),
        (b"[2001:DB8::1]", "2001:db8::1", True),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example", False),
    ],
)
def test_host(host: bytes, name: str, is_ip: bool) -> None:
    data = req(b"Host: " + host + b"\r\n")
    r = parse(data)
    assert (r.host, r.host_is_ip) == (name, is_ip)
    assert r.method == "GET" and r.target == "/" and r.size == len(data)


def test_host_whitespace_and_field_case() -> None:
    assert parse(req(b"hOsT:\t a.example  \r\n")).host == "a.example"


def test_missing_or_empty_host_is_no_name() -> None:
    assert parse(req(b"", version=b"HTTP/1.0")).host is None
    assert parse(req(b"Host:\r\n")).host is None


def test_absolute_form_target_wins() -> None:
    r = parse(req(b"Host: other.example\r\n", target=b"http://user@Emby.Example.com:8080/x?y"))
    assert r.host == "emby.example.com"


def test_bare_lf_accepted() -> None:
    assert parse(b"GET / HTTP/1.1\nHost: a.example\n\n").host == "a.example"


def test_trailing_body_not_counted() -> None:
    head = req(b"Host: a.example\r\n")
    assert parse(head + b"body bytes").size == len(head)


@pytest.mark.parametrize(
    "data",
    [
        req(b"X-Long: a\r\n b\r\n"),  # obsolete line folding
        req(b"Host : a.example\r\n"),  # whitespace before the colon
        req(b"Host: a.example\r\nHost: b.example\r\n"),  # two Hosts
        req(b"Host: a b\r\n"),
        req(b"Host: a.example:80x\r\n"),
        req(b"Host: [::1\r\n"),
        req(b"Host: [a.example]:80\r\n"),
        req(b"Host: a..example\r\n"),
        req(b"Host: a\x01b\r\n"),
        req(b"no colon here\r\n"),
        req(b"Host: a.example\r\n", version=b"HTTP/2.0"),
        b"GET / HTTP/1.1\rX: y\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
    ],
)
def test_malformed(data: bytes) -> None:
    assert kind(data) == "malformed"


def test_malformed_detected_before_the_head_ends() -> None:
    assert kind(b"GET / HTTP/1.1\r\n folded\r\n") == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"SSH-2.0-x\r\n",
        b"get / HTTP/1.1\r\n\r\n",
    ],
)
def test_not_http(data: bytes) -> None:
    assert kind(data) == "not-tls"


def test_not_http_decided_early() -> None:
    assert kind(b"PRI") == "not-tls"
    assert kind(b"PROX") == "not-tls"
    assert kind(b"X") == "not-tls"
    assert could_be_http(b"PRO") and could_be_http(b"MKCALENDAR")
    assert not could_be_http(b"MKCALENDARS")


def test_every_prefix_needs_data() -> None:
    data = req(b"Host: a.example:80\r\n")
    for n in range(len(data)):
        res = parse_http_request(data[:n])
        assert isinstance(res, NeedData) and res.at_least > n


def test_too_large() -> None:
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * 200
    assert isinstance(parse_http_request(data, 1000), NeedData)
    assert kind(data, 100) == "too-large"
    assert kind(req(b"Host: a.example\r\n"), 30) == "too-large"


@pytest.mark.parametrize(
    "v", [v for v in MANIFEST if "http_host" in v], ids=lambda v: str(v["file"])
)
def test_vectors_with_host(v: dict[str, object]) -> None:
    r = parse(data_of(v))
    assert r.host == http_name(v)
