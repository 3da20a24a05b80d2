"""ClientHello reader against every vector in tests/vectors, fed every way a socket may."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from snirelay.wire.clienthello import ClientHello, parse_client_hello
from snirelay.wire.errors import NeedData, ProtocolError
from unit.wire.wire_vectors import MANIFEST, TLS, data_of, hello_end, make_variants, vid

BIG = 1 << 22


def outcome(data: bytes, max_size: int = 65536) -> ClientHello | NeedData | ProtocolError:
    try:
        return parse_client_hello(data, max_size)
    except ProtocolError as e:
        return e


def check_manifest(res: object, v: dict[str, Any]) -> None:
    kind = v["kind"]
    if kind == "incomplete":
        assert isinstance(res, NeedData), res
        assert res.at_least > v["size"]
        return
    if kind in ("not-tls", "malformed"):
        assert isinstance(res, ProtocolError) and res.kind == kind, res
        return
    assert isinstance(res, ClientHello), res
    assert res.kind == kind
    assert res.sni == v["sni"]
    assert res.sni_normalized == v["sni_normalized"]
    assert res.sni_is_ip == v["sni_is_ip_literal"]
    assert res.alpn == (None if v["alpn"] is None else tuple(v["alpn"]))
    assert list(res.versions) == v["tls_versions_offered"]
    assert res.records == v["records"]
    assert res.size == hello_end(v)
    if kind == "tls":
        assert res.ech == v["ech"]
        assert res.psk == v["psk"]
        assert res.early_data == ("early_data" in v["extensions"])
        assert res.handshake_size == sum(v["record_sizes"])


@pytest.mark.parametrize("v", MANIFEST, ids=vid)
def test_whole(v: dict[str, Any]) -> None:
    check_manifest(outcome(data_of(v)), v)


@pytest.mark.parametrize("v", [v for v in MANIFEST if v["kind"] in ("tls", "sslv2")], ids=vid)
def test_every_proper_prefix_needs_data(v: dict[str, Any]) -> None:
    data = data_of(v)
    end = hello_end(v)
    for n in range(end):
        res = parse_client_hello(data[:n])
        assert isinstance(res, NeedData), (n, res)
        # accurate: asks for more than it has, never for more than the hello needs
        assert n < res.at_least <= end, (n, res)


@pytest.mark.parametrize("v", [v for v in MANIFEST if v["kind"] != "incomplete"], ids=vid)
def test_byte_by_byte_like_a_relay(v: dict[str, Any]) -> None:
    """Feed one byte at a time, asking the parser only when at_least is reached."""
    data = data_of(v)
    buf = b""
    calls = 0
    want = 1
    res: object = None
    for i in range(len(data)):
        buf += data[i : i + 1]
        if len(buf) < want:
            continue
        calls += 1
        res = outcome(buf)
        if isinstance(res, NeedData):
            assert res.at_least > len(buf)
            want = res.at_least
            continue
        break
    check_manifest(res, v)
    # not a spin: a handful of calls per record, never one per byte of a big record
    if v["kind"] == "tls":
        assert calls <= 4 * v["records"] + 4


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("v", TLS, ids=vid)
def test_random_chunking(v: dict[str, Any], seed: int) -> None:
    data = data_of(v)
    rng = random.Random(f"{v['file']}/{seed}")
    cuts = sorted(rng.sample(range(1, len(data)), min(8, len(data) - 1)))
    for c in cuts:
        if c < hello_end(v):
            assert isinstance(parse_client_hello(data[:c]), NeedData)
    check_manifest(outcome(data), v)


@pytest.mark.parametrize("v", TLS, ids=vid)
def test_record_boundaries(v: dict[str, Any]) -> None:
    data = data_of(v)
    pos = 0
    while pos < hello_end(v):
        pos += 5 + struct.unpack("!H", data[pos + 3 : pos + 5])[0]
        res = outcome(data[:pos])
        if pos < hello_end(v):
            assert isinstance(res, NeedData)
    check_manifest(outcome(data[:pos]), v)


@pytest.mark.parametrize("size", [1, 7, 100])
@pytest.mark.parametrize("v", TLS, ids=vid)
def test_resplit_into_records(v: dict[str, Any], size: int) -> None:
    src = data_of(v)
    h = make_variants.Hello.parse(src)
    hs = h.handshake()
    data = make_variants.records(hs, [size], h.record_version)
    res = parse_client_hello(data, BIG)
    assert isinstance(res, ClientHello)
    assert res.sni == v["sni"]
    assert res.alpn == (None if v["alpn"] is None else tuple(v["alpn"]))
    assert list(res.versions) == v["tls_versions_offered"]
    assert res.records == -(-len(hs) // size)
    assert res.size == len(data)
    assert res.handshake_size == len(hs)
    if size <= 7:
        # the 4-byte handshake header itself split across records: every prefix waits
        for n in range(0, 40):
            assert isinstance(parse_client_hello(data[:n], BIG), NeedData)


@pytest.mark.parametrize("v", TLS, ids=vid)
def test_trailing_bytes_stay_unconsumed(v: dict[str, Any]) -> None:
    data = data_of(v)[: hello_end(v)]
    extra = b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello"
    res = parse_client_hello(data + extra)
    assert isinstance(res, ClientHello)
    assert res.size == len(data)


def test_oversize_hello_parses_and_cap_applies() -> None:
    v = next(v for v in MANIFEST if v["file"].startswith("variant_oversize_padding_20k"))
    data = data_of(v)
    assert len(data) > 20000
    res = parse_client_hello(data, max_size=len(data))
    assert isinstance(res, ClientHello) and res.sni == "emby.example.com"
    with pytest.raises(ProtocolError) as e:
        parse_client_hello(data, max_size=len(data) - 1)
    assert e.value.kind == "too-large"
    # decided as soon as the handshake header is in, not after buffering the cap
    with pytest.raises(ProtocolError) as e:
        parse_client_hello(data[:9], max_size=16000)
    assert e.value.kind == "too-large"


def test_default_cap_is_64k() -> None:
    body_len = 70000
    data = b"\x16\x03\x01\x40\x00" + b"\x01" + body_len.to_bytes(3, "big")
    with pytest.raises(ProtocolError) as e:
        parse_client_hello(data)
    assert e.value.kind == "too-large"
    assert isinstance(parse_client_hello(data, max_size=1 << 20), NeedData)


# ----------------------------------------------------------- built hellos ---

BASE = data_of(next(v for v in MANIFEST if v["file"] == "curl_sni_http2.bin"))


def build(edit: Any = None, sizes: tuple[int, ...] = (16384,)) -> bytes:
    h = make_variants.Hello.parse(BASE).copy()
    if edit is not None:
        edit(h)
    return bytes(make_variants.records(h.handshake(), list(sizes), h.record_version))


def with_sni(name: bytes) -> bytes:
    return build(lambda h: h.set_sni(name))


def error_kind(data: bytes) -> str:
    with pytest.raises(ProtocolError) as e:
        parse_client_hello(data)
    assert str(e.value).startswith(e.value.kind + ": ")
    return e.value.kind


@pytest.mark.parametrize(
    "name,norm,is_ip",
    [
        (b"Emby.Example.COM.", "emby.example.com", False),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example", False),
        (b"_srv.example.com", "_srv.example.com", False),
        (b"a" * 63 + b".com", "a" * 63 + ".com", False),
        (b"192.0.2.10", "192.0.2.10", True),
        (b"2001:DB8::10", "2001:db8::10", True),
        (b"[::1]", "::1", True),
        (b"localhost", "localhost", False),
    ],
)
def test_sni_names(name: bytes, norm: str, is_ip: bool) -> None:
    res = parse_client_hello(with_sni(name))
    assert isinstance(res, ClientHello)
    assert res.sni == name.decode()
    assert res.sni_normalized == norm
    assert res.sni_is_ip is is_ip


@pytest.mark.parametrize(
    "name",
    [
        b"a..b",
        b".example.com",
        b"-a.example.com",
        b"a-.example.com",
        b"*.example.com",
        b"a" * 64 + b".com",
        ("a" * 60 + ".").encode() * 5 + b"com",
        "bücher.example".encode(),
        b"exa mple.com",
        b"example.com\x00",
        b"a/b",
        b"[example.com]",
        b"1.2.3.4:443",
    ],
)
def test_invalid_sni_is_malformed(name: bytes) -> None:
    assert error_kind(with_sni(name)) == "malformed"


def _set_ext(etype: int, payload: bytes) -> Any:
    def edit(h: Any) -> None:
        if h.ext(etype) is None:
            h.insert_before_psk(etype, payload)
        else:
            h.replace_ext(etype, payload)

    return edit


def test_grease_versions_dropped() -> None:
    sv = bytes([8]) + b"\x1a\x1a\x03\x04\x03\x03\xfa\xfa"
    res = parse_client_hello(build(_set_ext(0x002B, sv)))
    assert isinstance(res, ClientHello) and res.versions == ("TLS1.3", "TLS1.2")


def test_ech_psk_early_data_flags() -> None:
    def edit(h: Any) -> None:
        h.insert_before_psk(0xFE0D, b"\x00\x00\x01\x00\x01\x00")
        h.insert_before_psk(0x002A, b"")
        h.extensions.append((0x0029, b"\x00"))

    res = parse_client_hello(build(edit))
    assert isinstance(res, ClientHello)
    assert (res.ech, res.psk, res.early_data) == (True, True, True)
    assert res.sni == "emby.example.com"  # with ECH this is the outer name


def test_empty_alpn_extension_absent_vs_present() -> None:
    res = parse_client_hello(
        build(lambda h: setattr(h, "extensions", [e for e in h.extensions if e[0] != 0x10]))
    )
    assert isinstance(res, ClientHello) and res.alpn is None


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda h: h.extensions.append(h.extensions[0]), id="duplicate-extension"),
        pytest.param(lambda h: h.extensions.insert(0, (0x0029, b"\x00")), id="psk-not-last"),
        pytest.param(_set_ext(0x0010, b"\x00\x00"), id="alpn-empty-list"),
        pytest.param(_set_ext(0x0010, b"\x00\x03\x03h2"), id="alpn-overrun"),
        pytest.param(_set_ext(0x0010, b"\x00\x04\x00\x02h2"), id="alpn-empty-name"),
        pytest.param(_set_ext(0x002B, b"\x03\x03\x04\x03"), id="versions-odd"),
        pytest.param(_set_ext(0x0000, b""), id="sni-empty-ext"),
        pytest.param(
            _set_ext(0x0000, b"\x00\x0a\x00\x00\x03a.b\x00\x00\x01c"), id="sni-two-host-names"
        ),
        pytest.param(_set_ext(0x0000, b"\x00\x03\x00\x00\x00"), id="sni-empty-name"),
    ],
)
def test_malformed_extensions(edit: Any) -> None:
    assert error_kind(build(edit)) == "malformed"


def test_record_level_errors() -> None:
    good = build()
    body = good[5:]
    # zero-length record, record over 2^14, a non-handshake record inside the hello
    assert error_kind(b"\x16\x03\x01\x00\x00" + good) == "malformed"
    assert error_kind(b"\x16\x03\x01\x40\x01" + body[:10]) == "malformed"
    split = build(sizes=(100,))
    assert error_kind(split[:105] + b"\x17" + split[106:]) == "malformed"
    # more bytes in the hello's last record than the hello holds
    extra = body + b"\x00\x00"
    assert error_kind(b"\x16\x03\x01" + struct.pack("!H", len(extra)) + extra) == "malformed"
    # handshake type decided from one body byte
    assert error_kind(b"\x16\x03\x01\x02\x00\x02") == "malformed"
    # record version major not 3 at offset 0: not TLS
    assert error_kind(b"\x16\x02") == "not-tls"


@pytest.mark.parametrize("first", [b"G", b"S", b"P", b"\x00", b"\x15", b"\x17", b"{"])
def test_not_tls_after_one_byte(first: bytes) -> None:
    assert error_kind(first) == "not-tls"


def test_sslv2_incremental_and_strict() -> None:
    v = next(v for v in MANIFEST if v["kind"] == "sslv2")
    data = data_of(v)
    for n in range(len(data)):
        assert isinstance(parse_client_hello(data[:n]), NeedData)
    assert error_kind(b"\x80\x2e\x04") == "not-tls"  # SERVER-HELLO-ish, not a client hello
    assert error_kind(b"\x80\x2e\x01\x00\x02") == "not-tls"  # real SSL 2.0
    bad = bytearray(data)
    bad[8] = 1  # session_id_length of 1: lengths no longer add up
    assert error_kind(bytes(bad)) == "malformed"
