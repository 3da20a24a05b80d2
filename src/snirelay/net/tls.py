"""TLS sides: one end of a connection over TLS, on `ssl.SSLObject` and memory BIOs.

How it works
------------
A `TlsSide` owns a non-blocking socket (a `RawSide`) and the SSL object it makes from
a context between two memory BIOs of its own; it is driven by the same readiness
callbacks as a raw side (no coroutine, no thread per connection) and has the `Side`
interface (net.sides):

- `recv_into(buf)` decrypts straight into the caller's buffer (the pump's); when the
  SSL object wants more ciphertext, one `recv_into` of up to `RECV_CHUNK` bytes into a
  buffer shared by every side of the process feeds the incoming BIO, which may carry
  many records. A read decrypts one record (16 KiB at most), so the call reads on
  while whole records are held and the buffer has room: the pump then moves a buffer
  per send, not a record (re-originating, a single stream's user CPU per GB fell from
  1.43 s to 0.82 s, `make bench`). `buffered()` is what the side holds (records not
  yet decrypted, bytes OpenSSL decrypted already): no readiness event announces it,
  so the pump comes back for it.
- `send(data)` encrypts at most `SEND_CHUNK` bytes of plaintext and writes the
  ciphertext to the socket; what the socket does not take stays in one backlog, and
  `unsent()` says so: the pump then waits for writability and calls `send(b"")`, which
  only flushes. A side never holds more than one chunk of ciphertext: memory per
  connection is bounded.
- `shutdown_write()` sends close_notify, then shuts the TCP write side down (a FIN):
  the other direction keeps flowing (half-close). Only once the incoming BIO and
  OpenSSL's buffer are empty: `SSLObject.unwrap()` calls `SSL_shutdown` twice, and the
  second call reads (and drops) any application data already buffered; so with data
  still buffered, close_notify waits until the reads have drained it.
- A peer's close_notify (`SSLZeroReturnError`, or a read that answers 0) is the end
  of its stream; met behind data the call returns, it is kept (`ended`) for the next
  call, and `buffered()` says so (no readiness event will). A TCP EOF without one
  (`SSLEOFError`: the peer closed abruptly) is an end too; a relay passes it on as
  one, as a TCP relay would.
- `step()` (the side's handshake, run by the connection's handshake phase) answers
  `DONE`, or `WANT_READ` / `WANT_WRITE`: what to wait for before calling it again.
  Toward a backend OpenSSL verifies the chain and the side then checks the name itself
  (`expect`, `check_name`): a mismatch fails the handshake as OpenSSL's check would,
  and the error names the names the certificate does carry.

The SSL object is the `ssl` module's own (`SSLContext._wrap_bio`), not the
`ssl.SSLObject` wrapper around it: that wrapper adds a Python call to every read,
write, pending and handshake step (about twenty per terminated handshake), and the
object underneath has the same methods (`shutdown` for `unwrap`). Where the private
constructor is missing (another Python), `wrap_bio` and its wrapper are used.

Error handling: `ssl.SSLError` is an `OSError`, so a failed record or a reset ends the
connection through the pump's error path like any socket error; the handshake phase
names the TLS reason in the record.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from snirelay.net.sides import DONE, WANT_READ, WANT_WRITE, DecodingSide, RawSide
from snirelay.wire.names import is_ip

RECV_CHUNK = 256 * 1024  # ciphertext read from the socket per recv (many records)
SEND_CHUNK = 64 * 1024  # plaintext encrypted per send (bounds the backlog)

# One receive buffer for every TLS side of the process (a single-threaded loop): the
# bytes are copied into the side's incoming BIO at once.
_SCRATCH = memoryview(bytearray(RECV_CHUNK))

_DIRECT = hasattr(ssl.SSLContext, "_wrap_bio") and hasattr(ssl.SSLContext, "_encode_hostname")


def wrap(
    ctx: ssl.SSLContext,
    inc: ssl.MemoryBIO,
    out: ssl.MemoryBIO,
    server_side: bool,
    server_hostname: str | None,
    session: ssl.SSLSession | None,
) -> Any:
    """The SSL object between two memory BIOs (see the module docstring)."""
    if _DIRECT:
        name = ctx._encode_hostname(server_hostname)  # type: ignore[attr-defined]
        return ctx._wrap_bio(  # type: ignore[attr-defined]
            inc, out, server_side=server_side, server_hostname=name, owner=None, session=session
        )
    obj = ctx.wrap_bio(inc, out, server_side=server_side, server_hostname=server_hostname)
    if session is not None:
        obj.session = session
    return obj


class TlsSide(DecodingSide):
    """A TLS end over `sock`, with its own SSL object and BIOs made from `ctx`."""

    __slots__ = (
        "sock",
        "fd",
        "obj",
        "inc",
        "out",
        "backlog",
        "fin",
        "notify",
        "expect",
        "info",
        "hungry",
        "offered",
        "ended",
    )

    raw = False
    kind = "tls"  # names the handshake in close reasons

    def __init__(
        self,
        sock: RawSide,
        ctx: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        initial: bytes | bytearray = b"",
        expect: str | None = None,
    ) -> None:
        """`server_side`: terminate (answer a client); else originate toward
        `server_hostname` (None: no SNI), resuming `session` if given. `initial`: bytes
        already read from the socket (the sniffed hello)."""
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = wrap(ctx, inc, out, server_side, server_hostname, session)
        self.offered = session is not None  # a kept session, for resumption
        self.sock = sock
        self.expect = expect  # a backend side: the name its certificate must cover
        # (version, cipher, ALPN) once the handshake is done: OpenSSL forgets them at
        # shutdown, the record is written after it
        self.info: tuple[str | None, str | None, str | None] = (None, None, None)
        self.fd = sock.fileno()
        self.obj: Any = obj  # _ssl._SSLSocket (or ssl.SSLObject: `wrap`)
        self.inc = inc
        self.out = out
        # ciphertext the socket did not take yet
        self.backlog: bytes | memoryview | None = None
        self.fin = False  # shut the TCP write side once the backlog is out
        self.notify = False  # close_notify wanted, waiting for the incoming side to drain
        # a terminating side with nothing read yet reads the socket before its first
        # handshake step (OpenSSL could only ask for the ClientHello: an exception)
        self.hungry = server_side and not initial
        self.ended = False  # the peer's end was read behind data already returned
        if initial:
            inc.write(initial)

    @property
    def tls(self) -> TlsSide:
        return self

    # ---- reading -------------------------------------------------------------------
    def recv_into(self, buf: memoryview, /) -> int:
        obj, inc = self.obj, self.inc
        if self.ended:
            return 0
        if not inc.pending and not obj.pending():
            # Nothing held: read the socket first. Asking OpenSSL first would raise
            # SSLWantReadError, and an exception costs more than the read (one per
            # readiness event: a third of a small request's CPU). `_feed`, inlined.
            got = self.sock.recv_into(_SCRATCH)
            if got:
                inc.write(_SCRATCH[:got])
            else:
                inc.write_eof()
        # Read until the buffer is full or no whole record is held (a read decrypts
        # one record, 16 KiB at most; one recv feeds many): the pump then moves a whole
        # buffer per send instead of one record, a system call and a pass through the
        # pump fewer per record.
        size, n = len(buf), 0
        while True:
            try:
                k: int = obj.read(size - n, buf[n:] if n else buf)  # into a buffer: the count
            except ssl.SSLWantReadError:
                if n:
                    break  # the rest of a record is on its way
                if inc.eof:
                    return 0  # cannot happen (EOF makes OpenSSL raise SSLEOFError): no spin
                self._feed()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                k = 0
            if not k:  # the peer's close_notify (a read answers 0), or its EOF
                if not n:
                    return 0
                self.ended = True  # behind the data: the next call's end of stream
                break
            n += k
            if n == size or not (inc.pending or obj.pending()):
                break
        if self.out.pending:  # reading can produce records (a key update's answer)
            self._flush()
        if self.notify and not inc.pending and not obj.pending():
            self._close_notify()
        return n

    def _feed(self) -> int:
        """One socket read into the incoming BIO (0 = the peer's EOF, written as the
        BIO's EOF). BlockingIOError: nothing to read, wait for readable."""
        k: int = self.sock.recv_into(_SCRATCH)
        if k:
            self.inc.write(_SCRATCH[:k])
        else:
            self.inc.write_eof()
        return k

    def buffered(self) -> int:
        """Bytes held that no readiness event will announce: decrypted ones, and
        records in the incoming BIO (one recv feeds many; a read decrypts one). The
        start of a record whose rest is on its way is not counted: OpenSSL has taken
        it out of the BIO into its own record buffer (the pump would spin otherwise;
        a test holds this)."""
        held: int = self.obj.pending() + self.inc.pending
        return held or self.ended  # the end read behind data: announced by no event

    # ---- writing -------------------------------------------------------------------
    def send(self, data: memoryview | bytes, /) -> int:
        if self.backlog is not None and not self._flush():
            raise BlockingIOError("TLS backlog not written yet")
        if not data:
            return 0
        n: int = self.obj.write(data[:SEND_CHUNK])
        # the records out at once: `_flush` inlined, the backlog being empty here (a
        # Python call fewer per send: the keep-alive path is a few calls per request)
        out = self.out.read()
        try:
            k = self.sock.send(out)
        except BlockingIOError:
            k = 0
        if k < len(out):
            self.backlog = memoryview(out)[k:]
        return n

    def unsent(self) -> int:
        """Ciphertext accepted but not yet written to the socket."""
        return (len(self.backlog) if self.backlog is not None else 0) + self.out.pending

    def _flush(self) -> bool:
        """Write the pending ciphertext; True when all of it went out."""
        backlog = self.backlog
        if self.out.pending:
            data = self.out.read()
            # rare: a record queued behind a backlog
            backlog = data if backlog is None else bytes(backlog) + data
        while backlog is not None:
            try:
                k = self.sock.send(backlog)
            except BlockingIOError:
                self.backlog = backlog
                return False
            # a view only when the socket took part of it (most sends take it all)
            backlog = memoryview(backlog)[k:] if k < len(backlog) else None
        self.backlog = None
        if self.fin:
            self.fin = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone already; reading from it will say so
        return True

    def shutdown_write(self) -> None:
        if self.inc.pending or self.obj.pending():
            self.notify = True  # after the reads drain what is buffered (see above)
        else:
            self._close_notify()

    def _close_notify(self) -> None:
        self.notify = False
        try:
            self.obj.shutdown() if _DIRECT else self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's own close_notify is read as the end of its stream
        except (ssl.SSLError, ValueError):
            pass  # broken or never finished: no close_notify to send
        self.fin = True
        try:
            self._flush()
        except OSError:
            pass  # the peer is gone already; reading from it will say so

    def close(self, reset: bool = False) -> None:
        self.sock.close(reset)

    # ---- handshake -----------------------------------------------------------------
    def handshake(self) -> TlsSide:
        return self

    def step(self) -> int:
        """Advance the handshake: DONE, or what to wait for. Raises ssl.SSLError (the
        handshake failed: any alert is already written to the socket, best effort) or
        OSError (the socket failed, or the peer closed: ConnectionAbortedError)."""
        obj = self.obj
        if self.hungry:
            try:
                if not self._feed():
                    raise ConnectionAbortedError("the peer closed during the TLS handshake")
            except BlockingIOError:
                return WANT_READ
            self.hungry = False
        while True:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                wrote = self.out.pending
                if not self._flush():
                    return WANT_WRITE
                if wrote:
                    # A flight went out: what comes next is the peer's answer to it, so
                    # the socket is not read now (a recv that fails, ~2 us with its
                    # exception); if bytes are there already, the watch reports them.
                    return WANT_READ
                try:
                    if not self._feed():
                        raise ConnectionAbortedError("the peer closed during the TLS handshake")
                except BlockingIOError:
                    return WANT_READ
                continue
            except ssl.SSLError:
                try:
                    self._flush()  # the alert, if OpenSSL wrote one
                except OSError:
                    pass
                raise
            if self.expect is not None:
                check_name(self, self.expect)  # NameMismatch: the handshake failed
                self.expect = None
            cipher = obj.cipher()
            self.info = (obj.version(), cipher[0] if cipher else None, obj.selected_alpn_protocol())
            return DONE if self._flush() else WANT_WRITE


def quickack(side: object) -> None:
    """Send a pending (delayed) ACK on a TLS side's socket at once (TCP_QUICKACK)."""
    side = getattr(side, "tls", None)
    if isinstance(side, TlsSide):
        try:
            side.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass  # the peer is gone: the pump will say so


def failure(which: str, exc: OSError, backend: object, kind: str = "tls") -> tuple[str, str | None]:
    """The record's close reason and hint for a failed handshake on side `which`
    (`kind`: the side's, "tls" or "ws"; TLS errors are named "tls" whatever runs over)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        tls = getattr(backend, "tls", None)
        sent = tls.obj.server_hostname if isinstance(tls, TlsSide) else None
        return f"tls-{which}: certificate verify failed", (
            f"{exc.verify_message} (sent SNI: {sent or 'none'})"
        )
    if isinstance(exc, NameMismatch):
        return f"tls-{which}: certificate verify failed", str(exc)
    if isinstance(exc, ssl.SSLError):
        return f"tls-{which}: {(exc.reason or str(exc)).lower().replace('_', ' ')}", None
    if isinstance(exc, ConnectionAbortedError):
        return f"{kind}-{which}: {exc}", None
    return f"{kind}-{which}: {exc.strerror or exc}", None


class NameMismatch(OSError):
    """The backend's certificate, verified otherwise, does not cover the name sent."""


# (certificate DER, name) -> None when the certificate covers the name, else the
# names it lists. A backend shows the same certificate connection after connection,
# and decoding it (getpeercert()) was ~40 us of each re-originated handshake here;
# the DER is a cheap copy. Bounded: emptied when full.
_COVERS: dict[tuple[bytes, str], str | None] = {}
MAX_COVERS = 256


def check_name(side: TlsSide, name: str | None) -> None:
    """After a verified handshake toward a backend: does the certificate cover the name
    the relay asked for? Raises NameMismatch naming both (OpenSSL would only say
    "Hostname mismatch"; the names on the certificate are what an operator needs)."""
    if name is None:
        return
    der = side.obj.getpeercert(True)  # verified (the caller passes no name otherwise)
    key = (der or b"", name)
    listed = _COVERS.get(key, False)
    if listed is False:
        listed = _names_missing(side.obj.getpeercert() or {}, name)
        if der:
            if len(_COVERS) >= MAX_COVERS:
                _COVERS.clear()
            _COVERS[key] = listed
    if listed is not None:
        raise NameMismatch(
            f"the backend's certificate does not cover {name!r} (sent SNI:"
            f" {name if not is_ip(name) else 'none'}; the certificate names: {listed})"
        )


def _names_missing(cert: dict[str, Any], name: str) -> str | None:
    """None when the decoded certificate `cert` covers `name`, else the names it lists."""
    from snirelay.wire.names import certificate_covers

    sans = [(str(e[0]), str(e[1])) for e in cert.get("subjectAltName", ())]
    if certificate_covers(sans, name):
        return None
    return ", ".join(v for _, v in sans) or "no subjectAltName"


def describe_sides(client: object, backend: object) -> dict[str, object]:
    """The record's TLS fields: per TLS side its version, cipher and ALPN; toward the
    backend also the SNI sent, whether the certificate was verified (None while the
    handshake is not done) and whether the session was resumed."""
    out: dict[str, object] = {}
    for which, side in (("client", client), ("backend", backend)):
        side = getattr(side, "tls", None)
        if not isinstance(side, TlsSide):
            continue
        version, cipher, alpn = side.info
        out[f"{which}_tls"] = version
        out[f"{which}_cipher"] = cipher
        out[f"{which}_alpn"] = alpn
        if which == "backend":
            out["upstream_sni"] = side.obj.server_hostname
            # unknown (None) until the handshake is done: "yes" then means it was checked
            checked = side.obj.context.verify_mode == ssl.CERT_REQUIRED
            out["verified"] = checked if version is not None else None
            out["backend_resumed"] = side.obj.session_reused
    return out
