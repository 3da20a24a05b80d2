"""Tests for snirelay.wire.proxy: PROXY v1/v2 reading and writing.

Every valid header is fed whole, with trailing payload (which must stay unconsumed),
and as every proper prefix (which must give NeedData with a sound `at_least`).
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.proxy import (
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    authority,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_proxy_header,
    ssl_tlv,
)

PAYLOAD = b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n"


def parse_checked(header: bytes) -> ProxyHeader:
    """Parse `header` whole, with payload after it, and every proper prefix of it."""
    for cut in range(len(header)):
        got = parse_proxy_header(header[:cut])
        assert isinstance(got, NeedData), (cut, got)
        assert cut < got.at_least <= len(header), (cut, got)
    result = parse_proxy_header(header)
    assert isinstance(result, ProxyHeader)
    assert result.size == len(header)
    assert parse_proxy_header(header + PAYLOAD) == result
    return result


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((ver_cmd, fam)) + struct.pack("!H", len(body)) + body


# --- v1 -------------------------------------------------------------------------------


def test_v1_tcp4_spec_example() -> None:
    h = parse_checked(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert h == ProxyHeader(1, "proxy", "tcp4", ("192.168.0.1", 56324), ("192.168.0.11", 443), 47)


def test_v1_tcp6() -> None:
    h = parse_checked(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n")
    assert (h.family, h.src, h.dst) == ("tcp6", ("2001:db8::1", 65535), ("::1", 0))


def test_v1_longest_lines() -> None:
    ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY UNKNOWN {ff} {ff} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX
    h = parse_checked(line)
    assert (h.family, h.src, h.dst, h.size) == ("unknown", None, None, 107)
    tcp6 = parse_checked(f"PROXY TCP6 {ff} {ff} 65535 65535\r\n".encode())
    assert tcp6.src == (ff, 65535)


def test_v1_unknown_short() -> None:
    h = parse_checked(b"PROXY UNKNOWN\r\n")
    assert (h.version, h.command, h.family, h.size) == (1, "proxy", "unknown", 15)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  # LF without CR
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # missing port
        b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",  # double space
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",  # trailing space
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scope id
        b"PROXY TCP4 192.168.000.1 192.168.0.11 1 2\r\n",  # leading zeros
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 1\r\n",
        b"PROXY UDP4 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY tcp4 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY TCP4 1.2.3.4\r1.2.3.4 1 1\r\n",
        b"PROXY TCP4 1.2.3.\xff 1.2.3.4 1 1\r\n",
        b"PROXY \r\n",
        b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXYTCP4 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",  # longer than 107
        b"PROXY " + b"x" * 200,  # no CRLF within 107 bytes
        b"PROXY x\ry",  # CR not followed by LF, seen before the end
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00",
        b"SSH-2.0-OpenSSH\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(line)
    assert info.value.kind == "malformed"


def test_not_proxy_decided_early() -> None:
    with pytest.raises(ProtocolError):
        parse_proxy_header(b"G")
    with pytest.raises(ProtocolError):
        parse_proxy_header(b"PRO ")
    with pytest.raises(ProtocolError):
        parse_proxy_header(b"\r\n\r\n\x01")
    assert parse_proxy_header(b"") == NeedData(15)
    assert parse_proxy_header(b"PROX") == NeedData(15)
    assert parse_proxy_header(b"\r\n\r\n") == NeedData(16)


# --- v2 -------------------------------------------------------------------------------


def test_v2_tcp4() -> None:
    body = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 40000, 443)
    h = parse_checked(v2(0x21, 0x11, body))
    assert h == ProxyHeader(2, "proxy", "tcp4", ("192.0.2.1", 40000), ("198.51.100.2", 443), 28)


def test_v2_udp6_with_tlvs_kept() -> None:
    a = ipaddress.IPv6Address("2001:db8::1").packed
    b = ipaddress.IPv6Address("::1").packed
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN "h2", NOOP
    h = parse_checked(v2(0x21, 0x22, a + b + struct.pack("!HH", 53, 5353) + tlvs))
    assert (h.family, h.src, h.dst) == ("udp6", ("2001:db8::1", 53), ("::1", 5353))
    assert h.size == 16 + 36 + len(tlvs)
    assert h.tlvs == ((0x01, b"h2"), (0x04, b"")) and h.tlv(0x01) == b"h2"


def test_v2_tlvs_of_a_family_without_addresses_are_kept() -> None:
    h = parse_checked(v2(0x21, 0x31, bytes(216) + b"\x02\x00\x03a.b"))  # AF_UNIX
    assert h.family == "unknown" and h.tlv(PP2_TYPE_AUTHORITY) == b"a.b"


@pytest.mark.parametrize("tail", [b"\x02\x00", b"\x02\x00\x05abc", b"\x02"])
def test_v2_a_tlv_that_does_not_fit_is_malformed(tail: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_proxy_header(v2(0x21, 0x11, bytes(12) + tail))


def test_encode_v2_with_the_sni_and_the_tls_version() -> None:
    header = encode_v2(("192.0.2.1", 40000), ("198.51.100.2", 443),
                       tlvs=(authority("emby.example.com"), ssl_tlv("TLSv1.3")))  # fmt: skip
    h = parse_checked(header)
    assert h.tlv(PP2_TYPE_AUTHORITY) == b"emby.example.com"
    ssl = h.tlv(PP2_TYPE_SSL)
    assert ssl == b"\x01" + bytes(4) + b"\x21\x00\x07TLSv1.3"  # client SSL, verify 0, version


def test_v2_local_ignores_addresses() -> None:
    h = parse_checked(encode_v2_local())
    assert h == ProxyHeader(2, "local", "unknown", None, None, 16)
    body = bytes(12)
    h = parse_checked(v2(0x20, 0x11, body))
    assert (h.command, h.src, h.size) == ("local", None, 28)


@pytest.mark.parametrize(
    ("fam", "body"),
    [
        (0x00, b""),  # AF_UNSPEC
        (0x31, bytes(216)),  # AF_UNIX stream
        (0x32, bytes(216)),  # AF_UNIX dgram
        (0x10, bytes(12)),  # INET, transport unspecified
        (0x20, b""),  # INET6, transport unspecified, no block
    ],
)
def test_v2_proxy_without_usable_addresses(fam: int, body: bytes) -> None:
    h = parse_checked(v2(0x21, fam, body))
    assert (h.command, h.family, h.src, h.dst) == ("proxy", "unknown", None, None)


@pytest.mark.parametrize(
    "header",
    [
        v2(0x11, 0x11, bytes(12)),  # version 1 in the binary format
        v2(0x31, 0x11, bytes(12)),  # version 3
        v2(0x22, 0x11, bytes(12)),  # command 2
        v2(0x21, 0x41, bytes(12)),  # family 4
        v2(0x21, 0x13, bytes(12)),  # transport 3
        v2(0x21, 0x11, bytes(11)),  # short IPv4 block
        v2(0x21, 0x21, bytes(35)),  # short IPv6 block
        V2_SIGNATURE[:-1] + b"X" + bytes(16),
    ],
)
def test_v2_malformed(header: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(header)
    assert info.value.kind == "malformed"


def test_v2_need_data_is_exact_for_the_body() -> None:
    header = v2(0x21, 0x11, bytes(12) + bytes(1000))
    assert parse_proxy_header(header[:16]) == NeedData(len(header))
    assert parse_proxy_header(header[:500]) == NeedData(len(header))


# --- writers --------------------------------------------------------------------------


def test_encode_v1_exact_bytes() -> None:
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1(("2001:DB8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"


def test_encode_v2_exact_bytes() -> None:
    got = encode_v2(("192.0.2.1", 40000), ("198.51.100.2", 443))
    assert got == V2_SIGNATURE + bytes.fromhex("2111000cc0000201c63364029c4001bb")
    assert encode_v2(("::1", 1), ("::2", 2), stream=False)[12:16] == bytes.fromhex("21220024")
    assert encode_v2_local() == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_mapped_and_mixed_families() -> None:
    assert encode_v1(("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6)) == (
        b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"
    )
    assert encode_v1(("10.0.0.1", 5), ("::1", 6)) == b"PROXY TCP6 ::ffff:a00:1 ::1 5 6\r\n"
    h = parse_proxy_header(encode_v2(("10.0.0.1", 5), ("::1", 6)))
    assert isinstance(h, ProxyHeader)
    assert h.family == "tcp6" and h.src == ("::ffff:a00:1", 5)
    assert encode_v1(("fe80::1%eth0", 1), ("::1", 2)) == b"PROXY TCP6 fe80::1 ::1 1 2\r\n"


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (("example.com", 1), ("::1", 2)),
        (("1.2.3.4", 65536), ("1.2.3.4", 1)),
        (("1.2.3.4", -1), ("1.2.3.4", 1)),
    ],
)
def test_encode_rejects_bad_input(src: tuple[str, int], dst: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        encode_v1(src, dst)
    with pytest.raises(ValueError):
        encode_v2(src, dst)


# --- properties -----------------------------------------------------------------------

_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(0, 65535)
_pair = st.one_of(
    st.tuples(st.tuples(_ipv4, _port), st.tuples(_ipv4, _port)),
    st.tuples(st.tuples(_ipv6, _port), st.tuples(_ipv6, _port)),
)


def _expected(
    src: tuple[str, int], dst: tuple[str, int]
) -> tuple[tuple[str, int], tuple[str, int]]:
    """What the writers promise: IPv4 when both ends are IPv4 (or mapped), else IPv6."""
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    a4 = a if a.version == 4 else a.ipv4_mapped
    b4 = b if b.version == 4 else b.ipv4_mapped
    if a4 is not None and b4 is not None:
        return (str(a4), src[1]), (str(b4), dst[1])
    return (str(a), src[1]), (str(b), dst[1])


_tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4)


@given(_pair, st.booleans(), _tlv_lists)
def test_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]], stream: bool, tlvs: list[tuple[int, bytes]]
) -> None:
    src, dst = pair
    expected = _expected(src, dst)
    v1 = encode_v1(src, dst)
    assert len(v1) <= V1_MAX
    h1 = parse_checked(v1)
    assert (h1.src, h1.dst) == expected
    h2 = parse_checked(encode_v2(src, dst, stream=stream, tlvs=tuple(tlvs)))
    assert (h2.src, h2.dst) == expected and h2.tlvs == tuple(tlvs)
    version = "4" if "." in expected[0][0] and ":" not in expected[0][0] else "6"
    assert h1.family == "tcp" + version
    assert h2.family == ("tcp" if stream else "udp") + version


_prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE])


@given(_prefixes, st.binary(max_size=300))
def test_any_bytes_value_needdata_or_protocolerror(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    try:
        got = parse_proxy_header(data)
    except ProtocolError:
        return
    if isinstance(got, NeedData):
        assert got.at_least > len(data)
    else:
        assert isinstance(got, ProxyHeader)
        assert 0 < got.size <= len(data)
        assert parse_proxy_header(data[: got.size]) == got


@given(st.binary(max_size=40).map(lambda b: V2_SIGNATURE + b"\x21" + b))
def test_v2_fuzz_after_signature(data: bytes) -> None:
    try:
        got = parse_proxy_header(data)
    except ProtocolError:
        return
    assert isinstance(got, NeedData | ProxyHeader)
