"""sniff() and Sniffer: the entry points the relay uses on a connection's first bytes.

Every vector goes through `Sniffer` whole, one byte at a time (every proper prefix must
say "need more") and in random chunks, h11-style, and what was fed stays in `data`,
byte-exact. The cost tests count the work done (lines checked, bytes searched, record
headers read, parses), not time: feeding in small chunks must cost O(n), not O(n^2).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest

from snirelay.wire import clienthello, http1
from snirelay.wire.clienthello import TlsReader
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.sniff import Sniffed, Sniffer, sniff
from unit.wire.wire_vectors import MANIFEST, data_of, hello_end, http_name, make_variants, vid

Outcome = Sniffed | NeedData | ProtocolError


def outcome(data: bytes) -> Outcome:
    try:
        return sniff(data)
    except ProtocolError as e:
        return e


def check(res: Outcome, v: dict[str, Any], data: bytes) -> None:
    if "http_host" in v:
        assert isinstance(res, Sniffed) and res.kind == "http", res
        assert res.name == http_name(v) and res.hello is None and res.http is not None
        assert res.size == len(data)
    elif v["kind"] in ("tls", "sslv2"):
        assert isinstance(res, Sniffed) and res.kind == v["kind"], res
        assert res.name == v["sni_normalized"] and res.name_is_ip == v["sni_is_ip_literal"]
        assert res.hello is not None and res.http is None and res.size == hello_end(v)
    elif v["kind"] == "incomplete":
        assert isinstance(res, NeedData) and res.at_least > len(data), res
    else:
        assert isinstance(res, ProtocolError) and res.kind == v["kind"], res


def feed_all(chunks: Iterable[bytes], max_size: int = 65536) -> tuple[Sniffer, Outcome]:
    """Feed chunks until a decision; every NeedData must ask for more than is buffered."""
    sn = Sniffer(max_size)
    res: Outcome = NeedData(1)
    for chunk in chunks:
        try:
            res = sn.feed(chunk)
        except ProtocolError as e:
            return sn, e
        if isinstance(res, Sniffed):
            return sn, res
        assert res.at_least > len(sn.data)
    return sn, res


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# -------------------------------------------------------------- vectors ---


@pytest.mark.parametrize("v", MANIFEST, ids=vid)
def test_vectors_one_shot(v: dict[str, Any]) -> None:
    data = data_of(v)
    check(outcome(data), v, data)


@pytest.mark.parametrize("v", MANIFEST, ids=vid)
def test_vectors_through_sniffer_whole(v: dict[str, Any]) -> None:
    data = data_of(v)
    sn, res = feed_all([data])
    check(res, v, data)
    assert sn.data == data


@pytest.mark.parametrize("v", MANIFEST, ids=vid)
def test_vectors_through_sniffer_byte_by_byte(v: dict[str, Any]) -> None:
    """Each proper prefix of a message needs more; the decision matches the whole feed."""
    data = data_of(v)
    sn, res = feed_all(data[i : i + 1] for i in range(len(data)))
    if isinstance(res, Sniffed):
        assert len(sn.data) == res.size  # decided on the message's last byte, not later
        check(res, v, data[: res.size] if "http_host" in v else data)
    else:
        check(res, v, data)
    assert bytes(sn.data) == data[: len(sn.data)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("v", MANIFEST, ids=vid)
def test_vectors_through_sniffer_random_chunks(v: dict[str, Any], seed: int) -> None:
    data = data_of(v)
    rng = random.Random(f"{v['file']}/{seed}")
    cuts = rng.sample(range(1, len(data)), min(8, max(0, len(data) - 1)))
    sn, res = feed_all(split(data, cuts))
    if isinstance(res, Sniffed):
        assert res.size <= len(sn.data)
        check(res, v, data[: res.size] if "http_host" in v else data)
    else:
        check(res, v, data)


@pytest.mark.parametrize("v", [v for v in MANIFEST if v["kind"] == "tls"], ids=vid)
def test_every_prefix_needs_data(v: dict[str, Any]) -> None:
    data = data_of(v)
    for n in range(hello_end(v)):
        sn = Sniffer(65536)
        res = sn.feed(data[:n])
        assert isinstance(res, NeedData) and n < res.at_least <= hello_end(v), (n, res)


def test_trailing_bytes_stay_in_data_unconsumed() -> None:
    hello = data_of(next(v for v in MANIFEST if v["file"] == "curl_sni_http2.bin"))
    extra = b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello"
    sn = Sniffer(65536)
    res = sn.feed(hello + extra)
    assert isinstance(res, Sniffed) and res.size == len(hello) and res.name == "emby.example.com"
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
    sn = Sniffer(65536)
    res = sn.feed(head + b"body")
    assert isinstance(res, Sniffed) and res.size == len(head) and sn.data == head + b"body"


def test_decision_is_kept_and_later_bytes_still_recorded() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
    sn = Sniffer(65536)
    first = sn.feed(head)
    assert isinstance(first, Sniffed)
    assert sn.feed(b"more") is first and sn.data == head + b"more"
    sn = Sniffer(65536)
    with pytest.raises(ProtocolError) as e1:
        sn.feed(b"SSH-2.0-x\r\n")
    with pytest.raises(ProtocolError) as e2:
        sn.feed(b"more")
    assert e1.value is e2.value and e1.value.kind == "not-tls"
    assert sn.data == b"SSH-2.0-x\r\nmore"


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
    sn = Sniffer(65536)
    with pytest.raises(ProtocolError) as e:
        for i in range(len(data)):
            sn.feed(data[i : i + 1])
    assert e.value.kind == "not-tls"


def test_empty_needs_one_byte() -> None:
    assert sniff(b"") == NeedData(1)
    assert Sniffer(100).feed(b"") == NeedData(1)


@pytest.mark.parametrize(
    "first", [b"\x16\x03\x01\x40\x00\x01", b"GET / HTTP/1.1\r\nX: y\r\n", b"\x81\x2e\x01\x03"]
)
def test_too_large_by_the_time_max_size_is_buffered(first: bytes) -> None:
    """Undecided at max_size bytes is too-large (a TLS reader may tell earlier, from the
    lengths it has read)."""
    sn = Sniffer(300)
    with pytest.raises(ProtocolError) as e:
        sn.feed(first)
        for _ in range(300):
            sn.feed(b"a")
    assert e.value.kind == "too-large"
    assert len(sn.data) <= 300


# ----------------------------------------------------------- linear cost ---


def test_http_head_in_6_byte_lines_costs_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64 KiB head of 6-byte header lines, fed 6 bytes at a time: each line is checked
    once and each byte searched for the end of a line about once (the attack of issue 7:
    re-parsing the whole head on every read is quadratic)."""
    lines = b"X:ab\r\n" * 10900
    head = b"GET / HTTP/1.1\r\n" + lines + b"Host: a.example\r\n\r\n"
    assert 65000 < len(head) <= 65536
    checked = {"lines": 0, "bytes": 0}
    for name in ("_field", "_request_line"):
        real = getattr(http1, name)

        def counting(line: bytes, *rest: Any, real: Any = real) -> Any:
            checked["lines"] += 1
            checked["bytes"] += len(line)
            return real(line, *rest)

        monkeypatch.setattr(http1, name, counting)

    class CountingBuffer(bytearray):
        searched = 0

        def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
            lo = 0 if start is None else start
            hi = len(self) if end is None else end
            CountingBuffer.searched += max(0, hi - lo)
            return super().find(sub, lo, hi)

    sn = Sniffer(65536)
    sn.data = CountingBuffer()
    res: Outcome = NeedData(1)
    for i in range(0, len(head), 6):
        res = sn.feed(head[i : i + 6])
    assert isinstance(res, Sniffed) and res.name == "a.example" and res.size == len(head)
    assert checked["lines"] == 10900 + 2  # request line, X lines, Host (not the empty one)
    assert checked["bytes"] <= len(head)
    assert CountingBuffer.searched <= 2 * len(head), CountingBuffer.searched


def one_byte_records(handshake: bytes) -> bytes:
    out = bytearray()
    for b in handshake:
        out += b"\x16\x03\x01\x00\x01" + bytes([b])
    return bytes(out)


def count_tls_work(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count reader steps, record headers read and body parses (with the bytes parsed)."""
    work = {"steps": 0, "headers": 0, "parses": 0, "parsed": 0}
    step, check_start, parse_body = (
        TlsReader.step,
        clienthello._check_record_start,
        clienthello._parse_body,
    )

    def counting_step(self: TlsReader, data: Any, max_size: int) -> Any:
        work["steps"] += 1
        return step(self, data, max_size)

    def counting_start(data: Any, pos: int) -> None:
        work["headers"] += 1
        check_start(data, pos)

    def counting_parse(hs: bytes, **kw: int) -> Any:
        work["parses"] += 1
        work["parsed"] += len(hs)
        return parse_body(hs, **kw)

    monkeypatch.setattr(TlsReader, "step", counting_step)
    monkeypatch.setattr(clienthello, "_check_record_start", counting_start)
    monkeypatch.setattr(clienthello, "_parse_body", counting_parse)
    return work


def test_dribbled_hello_is_parsed_a_handful_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 517-byte hello in one record, fed byte by byte (what test_conn_sniff checked
    through the relay): the reader runs only once at_least is buffered, and the
    buffered bytes are kept byte-exact for the replay."""
    hello = data_of(next(v for v in MANIFEST if v["file"] == "curl_sni_http2.bin"))
    work = count_tls_work(monkeypatch)
    sn, res = feed_all(hello[i : i + 1] for i in range(len(hello)))
    assert isinstance(res, Sniffed) and res.name == "emby.example.com"
    assert sn.data == hello
    assert 1 <= work["steps"] <= 4, work  # 1 byte, the record header, the handshake header
    assert work["parses"] == 1 and work["parsed"] == len(hello) - 5


@pytest.mark.parametrize("source", ["curl_sni_http2.bin", "variant_oversize_padding_20k"])
def test_hello_in_1_byte_records_fed_byte_by_byte_costs_linear(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Every handshake byte in its own record (6 bytes on the wire per byte of hello),
    fed one byte at a time: each record header is read about once, whatever the number
    of steps; re-walking the records from the start on each step is quadratic."""
    v = next(v for v in MANIFEST if v["file"].startswith(source))
    hs = make_variants.Hello.parse(data_of(v)).handshake()
    data = one_byte_records(hs)
    work = count_tls_work(monkeypatch)
    sn, res = feed_all((data[i : i + 1] for i in range(len(data))), max_size=len(data))
    assert isinstance(res, Sniffed) and res.name == "emby.example.com"
    assert res.size == len(data) and res.hello is not None and res.hello.records == len(hs)
    assert sn.data == data
    assert work["headers"] <= len(hs) + work["steps"], work
    assert work["steps"] <= len(hs) + 2, work  # at most one step per record
    assert work["parses"] == 1 and work["parsed"] == len(hs)
