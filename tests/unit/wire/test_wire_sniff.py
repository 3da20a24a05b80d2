"""sniff(): the one entry point the relay calls on a connection's first bytes."""

from __future__ import annotations

from typing import Any

import pytest

from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.sniff import Sniffed, sniff
from unit.wire.wire_vectors import MANIFEST, data_of, hello_end, http_name, vid


def outcome(data: bytes) -> Sniffed | NeedData | ProtocolError:
    try:
        return sniff(data)
    except ProtocolError as e:
        return e


@pytest.mark.parametrize("v", MANIFEST, ids=vid)
def test_vectors(v: dict[str, Any]) -> None:
    data = data_of(v)
    res = outcome(data)
    if "http_host" in v:
        assert isinstance(res, Sniffed) and res.kind == "http"
        assert res.name == http_name(v) and res.hello is None and res.http is not None
        assert res.size == len(data)
    elif v["kind"] in ("tls", "sslv2"):
        assert isinstance(res, Sniffed) and res.kind == v["kind"]
        assert res.name == v["sni_normalized"] and res.name_is_ip == v["sni_is_ip_literal"]
        assert res.hello is not None and res.http is None and res.size == hello_end(v)
    elif v["kind"] == "incomplete":
        assert isinstance(res, NeedData) and res.at_least > len(data)
    else:
        assert isinstance(res, ProtocolError) and res.kind == v["kind"], res


def test_plain_http_byte_by_byte() -> None:
    data = b"GET / HTTP/1.1\r\nHost: Emby.Example.com:80\r\n\r\n"
    for n in range(len(data)):
        assert isinstance(sniff(data[:n]), NeedData)
    res = sniff(data)
    assert isinstance(res, Sniffed) and (res.kind, res.name, res.name_is_ip) == (
        "http",
        "emby.example.com",
        False,
    )


def test_http_without_host() -> None:
    res = sniff(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(res, Sniffed) and res.kind == "http" and res.name is None


@pytest.mark.parametrize("data", [b"\x00", b"Z", b"\x15", b"PRI ", b"PROXY ", b"SSH-"])
def test_not_tls_early(data: bytes) -> None:
    res = outcome(data)
    assert isinstance(res, ProtocolError) and res.kind == "not-tls"


def test_empty_needs_one_byte() -> None:
    assert sniff(b"") == NeedData(1)
