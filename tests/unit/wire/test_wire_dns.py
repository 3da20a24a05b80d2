"""DNS wire: query building, TCP framing, response reading (CNAME chains, compression
pointers and their loops, truncation), and a hypothesis property that only a value,
NeedData or ProtocolError ever comes out."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snirelay.wire.dns import (
    AAAA,
    CNAME,
    NXDOMAIN,
    A,
    DnsResponse,
    build_query,
    encode_name,
    frame,
    parse_response,
    parse_tcp_frame,
    rcode_name,
)
from snirelay.wire.errors import NeedData, ProtocolError

QID = 0x1234
RESPONSE = 0x8180  # QR, RD, RA, NOERROR


def name(text: str) -> bytes:
    return encode_name(text)


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def rr(owner: bytes, typ: int, ttl: int, rdata: bytes, cls: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", typ, cls, ttl, len(rdata)) + rdata


def message(
    answers: list[bytes],
    *,
    qname: str = "backend.test",
    qtype: int = A,
    qid: int = QID,
    flags: int = RESPONSE,
    ancount: int | None = None,
) -> bytes:
    n = len(answers) if ancount is None else ancount
    head = struct.pack("!HHHHHH", qid, flags, 1, n, 0, 0)
    return head + name(qname) + struct.pack("!HH", qtype, 1) + b"".join(answers)


Q = ptr(12)  # the question's name, as servers compress it


def parse(msg: bytes, qname: str = "backend.test", qtype: int = A) -> DnsResponse:
    return parse_response(msg, QID, qname, qtype)


def malformed(msg: bytes, qname: str = "backend.test", qtype: int = A) -> str:
    with pytest.raises(ProtocolError) as e:
        parse(msg, qname, qtype)
    assert e.value.kind == "malformed"
    return e.value.message


# ---- building --------------------------------------------------------------------------


def test_query_layout() -> None:
    q = build_query(0xBEEF, "Backend.Test.", AAAA)
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", q)
    assert (qid, flags, qd, an, ns, ar) == (0xBEEF, 0x0100, 1, 0, 0, 1)
    body = q[12:]
    assert body.startswith(b"\x07Backend\x04Test\x00" + struct.pack("!HH", AAAA, 1))
    opt = body[len(b"\x07Backend\x04Test\x00") + 4 :]
    assert opt == b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    assert build_query(1, "a", A, edns_size=0)[10:12] == b"\x00\x00"


@pytest.mark.parametrize(
    "bad", ["", ".", "a..b", "x" * 64 + ".test", ".".join(["a" * 63] * 4), "bücher.test"]
)
def test_bad_names_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        build_query(1, bad, A)


def test_longest_name() -> None:
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters, 255 on the wire
    assert len(encode_name(longest)) == 255
    assert parse(message([rr(Q, A, 1, bytes(4))], qname=longest), longest).addresses


def test_query_ranges() -> None:
    with pytest.raises(ValueError):
        build_query(0x10000, "a", A)
    with pytest.raises(ValueError):
        build_query(1, "a", -1)


# ---- TCP framing -----------------------------------------------------------------------


def test_tcp_frame_prefixes_and_trailing_bytes() -> None:
    msg = message([rr(Q, A, 60, bytes([127, 0, 0, 1]))])
    data = frame(msg) + b"\x00\x05trail"
    for cut in range(len(msg) + 2):
        got = parse_tcp_frame(data[:cut])
        assert isinstance(got, NeedData) and cut < got.at_least <= len(msg) + 2
    assert parse_tcp_frame(data) == (msg, len(msg) + 2)
    assert parse_tcp_frame(bytearray(data)) == (msg, len(msg) + 2)


def test_tcp_frame_too_short_for_a_header() -> None:
    with pytest.raises(ProtocolError):
        parse_tcp_frame(b"\x00\x0b" + bytes(11))
    with pytest.raises(ValueError):
        frame(bytes(0x10000))


# ---- answers ---------------------------------------------------------------------------


def test_a_answers_in_order_with_lowest_ttl() -> None:
    msg = message([rr(Q, A, 300, bytes([10, 0, 0, 2])), rr(Q, A, 60, bytes([10, 0, 0, 1]))])
    r = parse(msg)
    assert r.rcode == 0 and not r.truncated
    assert r.addresses == (("10.0.0.2", 300), ("10.0.0.1", 60))
    assert r.ttl == 60 and r.chain == ("backend.test",)


def test_aaaa_text_form() -> None:
    ip = bytes(15) + b"\x01"
    r = parse(message([rr(Q, AAAA, 5, ip)], qtype=AAAA), qtype=AAAA)
    assert r.addresses == (("::1", 5),)


def test_question_compared_case_insensitively() -> None:
    msg = message([rr(name("BACKEND.test"), A, 1, bytes(4))], qname="Backend.TEST")
    assert parse(msg, "backend.Test.").addresses == (("0.0.0.0", 1),)


def test_cname_chain_followed_with_pointers() -> None:
    # backend.test -> www.example.org (pointer into the rdata) -> cdn.example.org
    first_rdata_at = 12 + len(name("backend.test")) + 4 + 2 + 10
    chain1 = rr(Q, CNAME, 300, name("www.example.org"))
    example_org = ptr(first_rdata_at + 4)  # "example.org" inside "www.example.org"
    chain2 = rr(ptr(first_rdata_at), CNAME, 100, b"\x03cdn" + example_org)
    cdn_at = first_rdata_at + len(name("www.example.org")) + 2 + 10
    addr = rr(ptr(cdn_at), A, 200, bytes([192, 0, 2, 7]))
    r = parse(message([chain1, chain2, addr]))
    assert r.chain == ("backend.test", "www.example.org", "cdn.example.org")
    assert r.addresses == (("192.0.2.7", 200),)
    assert r.ttl == 100


def test_cname_chain_out_of_order_and_unrelated_records_skipped() -> None:
    msg = message(
        [
            rr(name("other.test"), A, 5, bytes([1, 1, 1, 1])),
            rr(name("target.test"), A, 50, bytes([2, 2, 2, 2])),
            rr(name("target.test"), A, 50, bytes([3, 3, 3, 3]), cls=3),  # CHAOS: skipped
            rr(Q, 16, 50, b"\x03txt"),  # TXT: skipped
            rr(Q, CNAME, 40, name("target.test")),
        ]
    )
    r = parse(msg)
    assert r.addresses == (("2.2.2.2", 50),) and r.ttl == 40


def test_cname_loop_gives_no_address() -> None:
    msg = message(
        [rr(Q, CNAME, 5, name("a.test")), rr(name("a.test"), CNAME, 5, name("backend.test"))]
    )
    r = parse(msg)
    assert r.addresses == () and r.ttl is None


def test_cname_to_name_without_records() -> None:
    r = parse(message([rr(Q, CNAME, 5, name("elsewhere.test"))]))
    assert r.addresses == () and r.chain == ("backend.test", "elsewhere.test")


def test_nxdomain_and_rcode_names() -> None:
    r = parse(message([], flags=0x8183))
    assert r.rcode == NXDOMAIN and r.addresses == ()
    assert rcode_name(NXDOMAIN) == "NXDOMAIN" and rcode_name(2) == "SERVFAIL"
    assert rcode_name(11) == "RCODE11"


def test_error_without_question_is_accepted() -> None:
    msg = struct.pack("!HHHHHH", QID, 0x8181, 0, 0, 0, 0)  # FORMERR, no question
    assert parse(msg).rcode == 1
    with pytest.raises(ProtocolError):
        parse(struct.pack("!HHHHHH", QID, 0x8180, 0, 0, 0, 0))


def test_ttl_with_top_bit_is_zero() -> None:
    assert parse(message([rr(Q, A, 0x80000001, bytes(4))])).ttl == 0


def test_truncated_answer_keeps_complete_records() -> None:
    full = message([rr(Q, A, 9, bytes([1, 2, 3, 4])), rr(Q, A, 9, bytes([5, 6, 7, 8]))])
    tc = bytearray(full)
    tc[2] |= 0x02
    cut = bytes(tc[:-3])
    r = parse(cut)
    assert r.truncated and r.addresses == (("1.2.3.4", 9),)
    assert "ends inside" in malformed(full[:-3])


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda m: m[:1] + b"\x35" + m[2:], "does not match"),  # id
        (lambda m: m[:2] + b"\x01\x00" + m[4:], "query"),  # QR clear
        (lambda m: m[:2] + b"\x88\x00" + m[4:], "opcode"),  # opcode 1
        (lambda m: m[:4] + b"\x00\x02" + m[6:], "questions"),
        (lambda m: m[:11], "shorter than a header"),
        (lambda m: m[:16], "question"),
    ],
)
def test_not_our_answer(mutate: Callable[[bytes], bytes], needle: str) -> None:
    msg = message([rr(Q, A, 1, bytes(4))])
    assert needle in malformed(mutate(msg))


def test_other_question_is_refused() -> None:
    assert "not the question" in malformed(message([], qname="other.test"))
    assert "not the question" in malformed(message([], qtype=AAAA))


def test_bad_address_length() -> None:
    assert "5 bytes" in malformed(message([rr(Q, A, 1, bytes(5))]))


def test_cname_rdata_must_be_exactly_a_name() -> None:
    assert "fill" in malformed(message([rr(Q, CNAME, 1, name("a.test") + b"\x00")]))


# ---- compression pointers ----------------------------------------------------------------

ANSWER_AT = 12 + len(name("backend.test")) + 4


def test_pointer_to_itself_or_forward_is_malformed() -> None:
    assert "point back" in malformed(message([rr(ptr(ANSWER_AT), A, 1, bytes(4))]))
    assert "point back" in malformed(message([rr(ptr(ANSWER_AT + 5), A, 1, bytes(4))]))


def test_pointer_loop_through_labels_is_malformed() -> None:
    # answer owner: label "x" then a pointer back to that label (x.x.x... forever)
    owner = b"\x01x" + ptr(ANSWER_AT)
    assert "point back" in malformed(message([rr(owner, A, 1, bytes(4))]))


def test_pointer_chain_that_grows_the_name_over_255() -> None:
    # 5 records whose owners each add 63-byte labels before pointing at the previous
    answers = []
    at = ANSWER_AT
    prev = ptr(12)
    for _ in range(5):
        owner = b"\x3f" + b"a" * 63 + prev
        answers.append(rr(owner, 16, 1, b""))
        prev = ptr(at)
        at += len(owner) + 10
    assert "over 255" in malformed(message(answers))


def test_reserved_label_type() -> None:
    assert "reserved" in malformed(message([rr(b"\x41x\x00", A, 1, bytes(4))]))


# ---- hypothesis ------------------------------------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> None:
    try:
        r = parse_response(data, QID, "backend.test", A)
    except ProtocolError as e:
        assert e.kind == "malformed"
    else:
        assert isinstance(r, DnsResponse)
    try:
        got = parse_tcp_frame(data)
    except ProtocolError:
        return
    if isinstance(got, NeedData):
        assert got.at_least > len(data)
    else:
        assert 0 < got[1] <= len(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    check(data)


@SETTINGS
@given(st.binary(max_size=200), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_any_answer_section(body: bytes, flags: int, ancount: int) -> None:
    check(message([body], flags=flags | 0x8000, ancount=ancount))


SEED = message(
    [
        rr(Q, CNAME, 300, name("www.example.org")),
        rr(ptr(ANSWER_AT + 12), A, 60, bytes([192, 0, 2, 1])),
        rr(ptr(ANSWER_AT + 12), A, 60, bytes([192, 0, 2, 2])),
    ]
)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_response(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SEED)
    for at, value in edits:
        data[at] = value
    check(bytes(data))
    check(bytes(data[: len(data) - len(edits)]))


def test_seed_is_valid() -> None:
    r = parse(SEED)
    assert r.addresses == (("192.0.2.1", 60), ("192.0.2.2", 60)) and r.ttl == 60
