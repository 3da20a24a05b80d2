"""One TLS probe, as an operator would make it with `openssl s_client -servername`.

How it works
------------
`probe(host, port, sni=..., connect=..., ...)` resolves the host (or takes the
`connect` address, as `curl --resolve` does), connects, and runs a TLS handshake with
the standard `ssl` module over memory BIOs (`SSLObject`), moving the bytes itself on a
blocking socket with a deadline per step. Doing the I/O by hand keeps what the server
sent: when the answer is not TLS, its first bytes say what the service is (plain HTTP
answers ``HTTP/1.1 400``), and a plaintext alert record gives the alert by its RFC 8446
name. Once the handshake completes, what it left to send (the client's Finished) is
sent too, so that the server, or a relay that terminates, sees a whole handshake.

The first handshake verifies the chain against the system store or `ca` (OpenSSL's
verdict, the one curl and most clients reach). When that fails, OpenSSL's verify code
and message are kept and the chain as received is read, then a second handshake
without verification completes, for the version, cipher and ALPN. The name is checked
here, not by OpenSSL, with the relay's own rule (`wire.names.certificate_covers`), for
the name asked for and for the address a client would use.

The chain as sent comes from `get_unverified_chain()`: public on `SSLObject` from
Python 3.13, present on the private `_sslobj` since 3.10 (this is the only reason to
touch it; nothing else is read there). Certificates are decoded with `cryptography`.

Each connection's own end (`local`: address and port, from getsockname) is kept: a
relay's admin API lists its clients by that address, so `check --api` finds the probe
there (diagnose.sightings.match).

Every step has a deadline (`timeout` each: resolve, connect, handshake). The result is
data (`Probe`); nothing is raised for anything the network does. Findings and fixes
come from `diagnose.findings`, which does no I/O.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import errno
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from snirelay.wire.names import certificate_covers, is_ip

# Alert descriptions (RFC 8446 §6, with RFC 5246's older ones) by code.
ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
KEEP_BYTES = 4096  # of what the server sent, for telling what a non-TLS service is


@dataclass
class Cert:
    """One certificate of the chain as sent, in the terms an operator reads."""

    subject: str
    issuer: str
    sans: list[tuple[str, str]]  # ("DNS", name) / ("IP Address", ip), as ssl gives them
    not_before: datetime.datetime
    not_after: datetime.datetime
    key: str  # "EC P-256", "RSA 2048", "Ed25519"
    self_signed: bool  # issuer == subject and the signature is its own
    is_ca: bool
    ca_issuers: list[str]  # Authority Information Access: where the issuer can be fetched
    fingerprint: str  # SHA-256, hex

    def days_left(self, now: datetime.datetime) -> int:
        return int((self.not_after - now).total_seconds() // 86400)

    def names(self) -> list[str]:
        return [value for _, value in self.sans]


@dataclass
class Probe:
    """What one connection attempt found. `outcome` is one of: "ok", "resolve-failed",
    "connect-refused", "connect-timeout", "connect-failed", "handshake-timeout",
    "alert" (the server refused with a TLS alert, `alert` names it), "closed" (the
    server closed the connection during the handshake without an alert), "not-tls"
    (the answer is not TLS; `answer` is its first bytes), "tls-error" (anything else
    OpenSSL refused; `error` says what)."""

    label: str  # "sni" or "no-sni"
    host: str  # as asked
    port: int
    sni: str | None  # the SNI sent (None: none)
    outcome: str = "ok"
    address: str | None = None  # the address connected to
    local: str | None = None  # this end of the connection (getsockname after connect)
    local_retry: str | None = None  # this end of the second, unverified handshake, if any
    started: float | None = None  # unix seconds, when the connection was made
    error: str | None = None
    alert: str | None = None
    answer: bytes = b""
    connect_ms: float | None = None
    handshake_ms: float | None = None
    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    chain: list[Cert] = field(default_factory=list)
    verified: bool | None = None  # None: no certificate to verify
    verify_code: int | None = None
    verify_error: str | None = None

    @property
    def leaf(self) -> Cert | None:
        return self.chain[0] if self.chain else None

    def covers(self, name: str) -> bool | None:
        """Does the leaf cover `name` (a host name or an IP)? None without a leaf."""
        leaf = self.leaf
        return None if leaf is None else certificate_covers(leaf.sans, name)


class _Step(Exception):
    """A step ended the probe: `outcome` and the words for it."""

    def __init__(self, outcome: str, error: str) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error


def resolve(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """getaddrinfo with a deadline (it has none of its own: it runs in a thread that is
    left behind when it does not answer in time). Raises _Step."""
    if is_ip(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [(family, (host, port))]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        infos = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise _Step(
            "resolve-failed", f"{host}: no answer from the resolver in {timeout:g} s"
        ) from None
    except socket.gaierror as exc:
        raise _Step("resolve-failed", f"{host}: {exc.strerror or exc}") from None
    return [(info[0], info[4]) for info in infos]


def _connect(family: int, sa: Any, timeout: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sa)
    except TimeoutError:
        sock.close()
        raise _Step(
            "connect-timeout",
            f"no answer to the connection attempt in {timeout:g} s (filtered by a"
            " firewall, or the host is down)",
        ) from None
    except ConnectionRefusedError:
        sock.close()
        raise _Step("connect-refused", "connection refused: nothing listens on that port") from None
    except OSError as exc:
        sock.close()
        why = errno.errorcode.get(exc.errno or 0, "")
        raise _Step(
            "connect-failed", f"{exc.strerror or exc}{f' ({why})' if why else ''}"
        ) from None
    return sock


def sockname(sock: socket.socket) -> str | None:
    """This end of a connected socket, as the other end sees it ("127.0.0.1:54321",
    "[::1]:54321"); None when the system does not say."""
    try:
        sa = sock.getsockname()
    except OSError:
        return None
    if not isinstance(sa, tuple) or len(sa) < 2:
        return None
    return f"[{sa[0]}]:{sa[1]}" if ":" in str(sa[0]) else f"{sa[0]}:{sa[1]}"


def _alert_in(data: bytes) -> str | None:
    """The description of the first plaintext alert record in `data`, by name."""
    at = 0
    while at + 5 <= len(data):
        kind, major, length = data[at], data[at + 1], int.from_bytes(data[at + 3 : at + 5])
        if major != 3:
            return None
        if kind == 21 and length == 2 and at + 7 <= len(data):
            code = data[at + 6]
            return ALERTS.get(code, f"alert {code}")
        at += 5 + length
    return None


def looks_like_tls(data: bytes) -> bool:
    """Do these bytes start with a TLS record header (handshake or alert, version 3.x)?"""
    return len(data) >= 3 and data[0] in (21, 22) and data[1] == 3


def _alert_from_reason(reason: str | None) -> str | None:
    """OpenSSL's reason for a received alert, e.g. TLSV1_UNRECOGNIZED_NAME -> its name."""
    if not reason:
        return None
    for prefix in ("SSLV3_ALERT_", "TLSV13_ALERT_", "TLSV1_ALERT_", "TLSV1_"):
        if reason.startswith(prefix):
            name = reason[len(prefix) :].lower()
            return name if name in ALERTS.values() else None
    return None


def _handshake(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    sni: str | None,
    timeout: float,
    probe: Probe,
) -> ssl.SSLObject:
    """Run one handshake on `sock`; fills `probe.answer`; raises _Step or
    ssl.SSLCertVerificationError (the object is then in `exc.obj`)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    deadline = time.monotonic() + timeout
    received = bytearray()
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLCertVerificationError as exc:
            exc.obj = obj  # type: ignore[attr-defined]
            raise
        except ssl.SSLError as exc:
            probe.answer = bytes(received[:KEEP_BYTES])
            raise _failed(exc, bytes(received)) from None
        pending = outgoing.read()
        try:
            if pending:
                sock.sendall(pending)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
        except TimeoutError:
            probe.answer = bytes(received[:KEEP_BYTES])
            raise _silent(bytes(received), timeout) from None
        except OSError as exc:
            probe.answer = bytes(received[:KEEP_BYTES])
            why = exc.strerror or exc
            raise _Step("closed", f"the connection broke during the handshake: {why}") from None
        if not chunk:
            probe.answer = bytes(received[:KEEP_BYTES])
            if received and not looks_like_tls(bytes(received)):
                raise _not_tls(bytes(received))
            raise _Step(
                "closed", "the server closed the connection during the handshake, without an alert"
            )
        if len(received) < KEEP_BYTES:
            received += chunk
        incoming.write(chunk)
    _finish(sock, outgoing)
    return obj


def _finish(sock: socket.socket, outgoing: ssl.MemoryBIO) -> None:
    """Send what the handshake left to send: the client's Finished (TLS 1.3, and 1.2
    with session tickets). Without it the server never completes the handshake: a
    terminating relay would record the probe as a client that left mid-handshake."""
    pending = outgoing.read()
    if pending:
        with contextlib.suppress(OSError):  # the result is what the handshake gave
            sock.sendall(pending)


def _silent(received: bytes, timeout: float) -> _Step:
    if received and not looks_like_tls(received):
        return _not_tls(received)
    return _Step(
        "handshake-timeout",
        f"no answer to the ClientHello in {timeout:g} s (a service that is not TLS and"
        " waits for its own protocol, or a TLS server that hangs)",
    )


def _failed(exc: ssl.SSLError, received: bytes) -> _Step:
    if received and not looks_like_tls(received):
        return _not_tls(received)
    alert = _alert_in(received) or _alert_from_reason(exc.reason)
    if alert is not None:
        return _Alert(alert)
    reason = (exc.reason or str(exc)).lower().replace("_", " ")
    return _Step("tls-error", f"the handshake failed: {reason}")


class _Alert(_Step):
    def __init__(self, alert: str) -> None:
        super().__init__("alert", f"the server refused the handshake with the alert {alert}")
        self.alert = alert


def _not_tls(received: bytes) -> _Step:
    return _Step("not-tls", f"the service does not speak TLS: {describe_answer(received)}")


def describe_answer(data: bytes) -> str:
    """What a non-TLS answer is, from its first bytes."""
    first = data.split(b"\n", 1)[0].strip()
    text = first[:80].decode("latin-1")
    printable = all(32 <= b < 127 for b in first[:80])
    if data.startswith(b"HTTP/"):
        return f"plain HTTP (it answered {text!r})"
    if data.startswith(b"SSH-"):
        return f"SSH (banner {text!r})"
    if printable and first:
        return f"it answered {text!r}"
    return f"it answered {len(data)} byte(s) that are not a TLS record ({data[:8].hex()}...)"


def cert_sans(cert: Any) -> list[tuple[str, str]]:
    """A `cryptography` certificate's subjectAltName entries, as `ssl` gives them."""
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    sans = [("DNS", n) for n in ext.get_values_for_type(x509.DNSName)]
    return sans + [("IP Address", str(ip)) for ip in ext.get_values_for_type(x509.IPAddress)]


def _cert(der: bytes) -> Cert:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.x509.oid import AuthorityInformationAccessOID

    cert = x509.load_der_x509_certificate(der)
    sans = cert_sans(cert)
    is_ca = False
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bool(bc.ca)
    except x509.ExtensionNotFound:
        pass
    issuers: list[str] = []
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        issuers = [
            str(d.access_location.value)
            for d in aia.value
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        ]
    except x509.ExtensionNotFound:
        pass
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        key = f"RSA {pub.key_size}"
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        key = {"secp256r1": "EC P-256", "secp384r1": "EC P-384", "secp521r1": "EC P-521"}.get(
            pub.curve.name, f"EC {pub.curve.name}"
        )
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        key = "Ed25519"
    elif isinstance(pub, ed448.Ed448PublicKey):
        key = "Ed448"
    elif isinstance(pub, dsa.DSAPublicKey):
        key = f"DSA {pub.key_size}"
    else:
        key = type(pub).__name__
    self_signed = False
    if cert.issuer == cert.subject:
        try:
            cert.verify_directly_issued_by(cert)
            self_signed = True
        except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure: not its own
            self_signed = False
    return Cert(
        subject=cert.subject.rfc4514_string() or "(empty)",
        issuer=cert.issuer.rfc4514_string() or "(empty)",
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key=key,
        self_signed=self_signed,
        is_ca=is_ca,
        ca_issuers=issuers,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _chain(obj: ssl.SSLObject) -> list[Cert]:
    get = getattr(obj, "get_unverified_chain", None) or obj._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    out = []
    for c in get() or ():
        der = c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        out.append(_cert(der))
    return out


def contexts(ca: str | None, alpn: tuple[str, ...]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(verifying, not verifying) client contexts; OSError/SSLError for a bad `ca`."""
    verifying = ssl.create_default_context(cafile=ca)
    verifying.check_hostname = False  # the name is checked here, for both names
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.verify_mode = ssl.CERT_NONE
    for ctx in (verifying, plain):
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
    return verifying, plain


def probe(
    label: str,
    host: str,
    port: int,
    *,
    sni: str | None,
    connect: str | None,
    ctxs: tuple[ssl.SSLContext, ssl.SSLContext],
    timeout: float,
) -> Probe:
    """Probe `host:port` (reaching `connect` instead when given) with SNI `sni`."""
    p = Probe(label, host, port, sni)
    try:
        addrs = resolve(connect or host, port, timeout)
        family, sa = addrs[0]
        p.address = f"[{sa[0]}]:{sa[1]}" if family == socket.AF_INET6 else f"{sa[0]}:{sa[1]}"
        t0 = time.monotonic()
        p.started = time.time()
        sock = _connect(family, sa, timeout)
        p.connect_ms = (time.monotonic() - t0) * 1000
        p.local = sockname(sock)
    except _Step as step:
        p.outcome, p.error = step.outcome, step.error
        return p
    verifying, plain = ctxs
    try:
        with sock:
            t0 = time.monotonic()
            try:
                obj = _handshake(sock, verifying, sni, timeout, p)
                p.verified = True
            except ssl.SSLCertVerificationError as exc:
                p.verified = False
                p.verify_code = exc.verify_code
                p.verify_error = exc.verify_message
                p.chain = _chain(exc.obj)  # type: ignore[attr-defined]
                obj = None
            p.handshake_ms = (time.monotonic() - t0) * 1000
        if obj is None:  # again without verifying: for the version, cipher and ALPN
            sock = _connect(family, sa, timeout)
            p.local_retry = sockname(sock)
            with sock:
                obj = _handshake(sock, plain, sni, timeout, p)
    except _Step as step:
        p.outcome, p.error = step.outcome, step.error
        p.alert = getattr(step, "alert", None)
        return p
    p.version = obj.version()
    cipher = obj.cipher()
    p.cipher = cipher[0] if cipher else None
    p.alpn = obj.selected_alpn_protocol()
    if not p.chain:
        p.chain = _chain(obj)
    return p
