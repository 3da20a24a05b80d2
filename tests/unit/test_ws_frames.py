"""The WebSocket side's frame decoding (net.ws): wsproto's parser over `_ViewBuffer`,
the buffer that hands out views of each read instead of copying, fed a stream of
frames cut at every kind of place (inside a header, inside the mask key, inside a
payload), decodes exactly what wsproto's own buffer decodes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from snirelay.net import ws


def frames(payloads: list[bytes], pings: list[int], client: bool) -> bytes:
    """The wire bytes of binary frames with these payloads, a ping after the ones
    whose index is in `pings`, masked when sent by a client."""
    sender = FrameProtocol(client=client, extensions=[])
    out = b""
    for i, p in enumerate(payloads):
        out += sender.send_data(p, True)
        if i in pings:
            out += sender.ping(b"p%d" % i)
    return out


def decode(
    wire: bytes, cuts: list[int], server: bool, view_buffer: bool
) -> list[tuple[str, bytes]]:
    """What a receiving FrameProtocol yields for `wire` fed in pieces cut at `cuts`:
    (kind, payload) in order, data parts joined per message."""
    proto = FrameProtocol(client=not server, extensions=[])
    if view_buffer:
        proto._frame_decoder.buffer = ws._ViewBuffer()  # type: ignore[assignment]  # as WsSide does
    out: list[tuple[str, bytes]] = []
    data = b""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(wire))), len(wire)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        proto.receive_bytes(wire[a:b])
        for frame in proto.received_frames():
            if frame.opcode is Opcode.PING:
                assert isinstance(frame.payload, bytes)
                out.append(("ping", frame.payload))
            else:
                assert isinstance(frame.payload, bytes)  # wsproto's type, kept
                data += frame.payload
                if frame.frame_finished:
                    out.append(("data", data))
                    data = b""
    return out


payloads = st.lists(st.binary(min_size=0, max_size=70_000), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(payloads, st.sets(st.integers(0, 4)), st.lists(st.integers(0, 400_000), max_size=12),
       st.booleans())  # fmt: skip
def test_the_view_buffer_decodes_as_wsprotos_own(
    payloads: list[bytes], pings: set[int], cuts: list[int], server: bool
) -> None:
    wire = frames(payloads, list(pings), client=server)
    got = decode(wire, cuts, server, view_buffer=True)
    assert got == decode(wire, cuts, server, view_buffer=False)
    assert [p for kind, p in got if kind == "data"] == payloads


def test_every_one_byte_cut_of_a_small_stream() -> None:
    """Cut after every byte: each header field split in each possible way."""
    wire = frames([b"x" * 130, b"", b"y" * 70_000], [0], client=True)
    cuts = list(range(len(wire)))
    got = decode(wire, cuts, server=True, view_buffer=True)
    assert [p for kind, p in got if kind == "data"] == [b"x" * 130, b"", b"y" * 70_000]
    assert ("ping", b"p0") in got


def test_the_buffer_keeps_what_a_header_left() -> None:
    buf = ws._ViewBuffer()
    buf.feed(b"abc")
    assert bytes(buf.consume_exactly(2) or b"") == b"ab"
    assert buf.consume_exactly(2) is None  # one byte left: not enough
    buf.rollback()
    buf.feed(b"de")  # joined to what was not committed
    assert bytes(buf.consume_exactly(5) or b"") == b"abcde"
    buf.commit()
    assert len(buf) == 0
