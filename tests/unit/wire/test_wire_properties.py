"""Hypothesis: on any input the wire readers return a value or NeedData, or raise
ProtocolError, and nothing else; NeedData always asks for more than it got."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snirelay.wire.clienthello import ClientHello, parse_client_hello
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.http1 import HttpRequest, parse_http_request
from snirelay.wire.sniff import Sniffed, Sniffer, sniff
from unit.wire.wire_vectors import MANIFEST, data_of

SEEDS = [data_of(v) for v in MANIFEST if v["size"] and v["size"] < 4096]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_all(data: bytes, max_size: int = 65536) -> None:
    for fn, value_type in (
        (parse_client_hello, ClientHello),
        (parse_http_request, HttpRequest),
        (sniff, Sniffed),
    ):
        try:
            res = fn(data, max_size)
        except ProtocolError as e:
            assert e.kind in ("not-tls", "malformed", "too-large")
            continue
        if isinstance(res, NeedData):
            assert res.at_least > len(data)
        else:
            assert isinstance(res, value_type)
            assert 0 < res.size <= len(data)


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes(data: bytes) -> None:
    check_all(data)


@SETTINGS
@given(st.binary(max_size=400), st.integers(0, 0xFFFF), st.sampled_from([1, 2, 3, 4]))
def test_tls_looking_bytes(body: bytes, length: int, minor: int) -> None:
    check_all(bytes([0x16, 3, minor]) + length.to_bytes(2, "big") + body, max_size=4096)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x03, 0x16, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_vectors(data: bytes) -> None:
    check_all(data)


@SETTINGS
@given(mutated(), st.integers(1, 2000))
def test_mutated_vectors_small_cap(data: bytes, cap: int) -> None:
    check_all(data, max_size=cap)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.binary(max_size=40).filter(lambda b: b"\n" not in b),
        max_size=6,
    ),
    st.sampled_from([b"GET ", b"POST ", b"OPTIONS ", b"G", b"PRI "]),
)
def test_http_like_bytes(lines: list[bytes], start: bytes) -> None:
    check_all(start + b"\r\n".join(lines) + b"\r\n\r\n")


def decision(fn: object) -> tuple[str, object, object, object]:
    """The comparable part of a sniff outcome."""
    try:
        res = fn()  # type: ignore[operator]
    except ProtocolError as e:
        return ("error", e.kind, None, None)
    if isinstance(res, NeedData):
        return ("need", None, None, None)
    assert isinstance(res, Sniffed)
    return (res.kind, res.name, res.name_is_ip, res.size)


def feed_chunks(data: bytes, cuts: list[int], max_size: int) -> Sniffed | NeedData:
    sn = Sniffer(max_size)
    res: Sniffed | NeedData = NeedData(1)
    edges = [0, *sorted(set(cuts)), len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        res = sn.feed(data[a:b])
        if isinstance(res, Sniffed):
            break
        assert res.at_least > len(sn.data)
    assert bytes(sn.data) == data[: len(sn.data)]
    return res


@SETTINGS
@given(
    st.one_of(mutated(), st.binary(max_size=300)),
    st.lists(st.integers(0, 4096), max_size=12),
    st.sampled_from([65536, 300, 64]),
)
def test_sniffer_in_any_chunks_decides_like_one_shot(
    data: bytes, cuts: list[int], max_size: int
) -> None:
    """Incremental = one shot: the same decision whatever the chunking (a Sniffed with
    the same name and size, the same error kind, or still undecided). Two differences
    are allowed, both about bytes not yet looked at: a sniffer waiting for at_least
    may still say "need" where the one-shot read already refuses the bytes; and a
    prefix whose lengths already exceed max_size is "too-large" where the whole input
    shows a "malformed" length first."""
    cuts = [c for c in cuts if c < len(data)]
    whole = decision(lambda: sniff(data, max_size))
    chunked = decision(lambda: feed_chunks(data, cuts, max_size))
    if chunked != whole:
        assert whole[0] == "error", (chunked, whole)
        assert chunked[0] == "need" or (
            chunked[0] == "error" and "too-large" in (chunked[1], whole[1])
        ), (chunked, whole)
