"""A terminating TLS side's reads, on a real socketpair with a client SSL object at the
other end: one `recv_into` fills the caller's buffer from every whole record one socket
read brought (not one record per call), a close_notify behind the data is the next
call's end of stream (never lost), and the start of a record whose rest is still on its
way is not reported as held (the pump would spin)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
import trustme

from snirelay.net.sides import DONE, RawSide
from snirelay.net.tls import TlsSide

RECORD = 16384  # the largest TLS record's plaintext


class Pair:
    """The relay's TlsSide (server) and a client SSLObject over memory BIOs on the other
    end of a socketpair; the handshake is done."""

    def __init__(self) -> None:
        ca = trustme.CA()
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("relay.test").configure_cert(sctx)
        sctx.num_tickets = 0  # no ticket records in the client's way
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(cctx)
        a, b = socket.socketpair()
        a.setblocking(False)
        self.peer = b
        self.peer.settimeout(5)
        self.side = TlsSide(RawSide(a.family, a.type, a.proto, a.detach()), sctx, server_side=True)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = cctx.wrap_bio(self.inc, self.out, server_hostname="relay.test")
        for _ in range(20):
            try:
                self.client.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            self.flush()
            try:
                state = self.side.step()
            except BlockingIOError:
                state = -1
            if done and state == DONE:
                return
            self.peer.setblocking(False)
            try:
                self.inc.write(self.peer.recv(1 << 16))
            except BlockingIOError:
                pass
            self.peer.setblocking(True)
        raise AssertionError("the handshake did not finish")

    def flush(self) -> None:
        if self.out.pending:
            self.peer.sendall(self.out.read())

    def close(self) -> None:
        self.side.close()
        self.peer.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def test_one_read_fills_the_buffer_from_several_records(pair: Pair) -> None:
    data = bytes(range(256)) * (3 * RECORD // 256)
    pair.client.write(data)  # three full records
    pair.flush()
    buf = memoryview(bytearray(4 * RECORD))
    n = pair.side.recv_into(buf)
    assert n == len(data)
    assert bytes(buf[:n]) == data
    assert not pair.side.buffered()


def test_a_close_notify_behind_the_data_is_the_next_reads_end(pair: Pair) -> None:
    data = b"x" * (2 * RECORD + 100)
    pair.client.write(data)
    try:
        pair.client.unwrap()  # close_notify, in the same socket write as the data
    except ssl.SSLWantReadError:
        pass
    pair.flush()
    buf = memoryview(bytearray(4 * RECORD))
    assert pair.side.recv_into(buf) == len(data)
    assert pair.side.buffered(), "the end is held: no readiness event will announce it"
    assert pair.side.recv_into(buf) == 0


def test_the_start_of_a_record_is_not_held(pair: Pair) -> None:
    pair.client.write(b"a" * RECORD)
    pair.client.write(b"b" * RECORD)
    wire = pair.out.read()
    pair.peer.sendall(wire[: len(wire) - 100])  # the second record cut short
    buf = memoryview(bytearray(4 * RECORD))
    assert pair.side.recv_into(buf) == RECORD
    assert not pair.side.buffered()
    with pytest.raises(BlockingIOError):
        pair.side.recv_into(buf)  # nothing more on the socket yet
    pair.peer.sendall(wire[len(wire) - 100 :])
    assert pair.side.recv_into(buf) == RECORD
    assert bytes(buf[:RECORD]) == b"b" * RECORD
