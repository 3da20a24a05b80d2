"""The TLS contexts of one upstream, built once from its transports (net.runtime).

How it works
------------
`ServerTLS` (a `listen_transport` with `tls`): the certificate and key of the
transport, or for ``servername=NAME`` a self-signed certificate made at start (once per
name and process tree: workers fork after it is made, so they all serve the same one).
One `SSLContext` per ALPN choice: the transport's own list (the server picks in that
order), or, when the connection is re-originated, exactly the protocol the backend
chose (`for_backend`), so ALPN agrees end to end; and `refusing`, whose server-name
callback answers any ClientHello with a handshake_failure alert (the client's answer
when the backend's handshake failed). Session tickets toward clients (resumption)
unless `network.tls_session_tickets` is false. Every context is made at start, the
files checked once (`_check_pem`): the choices are few (none, or one of the protocols
the backend may be offered).

`ClientTLS` (a `remote_transport` with `tls`): verification against the system store,
or `ca=` instead, or none with `insecure`; `client_cert=`/`client_key=` for mutual
TLS; the SNI rule (`server_hostname`); one context per ALPN offer. The offer is the
client's own list (sniffed from its ClientHello) filtered to the protocols this
upstream may offer (the transport's `alpn=`, else h2 and http/1.1), so a client cannot
make the relay build contexts without bound. Sessions are kept per backend address
and context (`session`/`keep`), bounded, for resumption.

Error handling: a certificate or key that cannot be used (missing, unreadable, not
PEM, not matching) raises `ConfigError` naming the transport's place and the file;
the server turns it into exit code 2 before anything listens. A certificate that has
expired or expires within `EXPIRY_WARNING_DAYS` is a warning at start; so are
`insecure`, a self-signed `servername=` certificate, a backend that will see no SNI,
and `ocsp=` (realm's option; Python's ssl cannot staple, so it is ignored).
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from collections import OrderedDict
from typing import Any

from snirelay.config.model import Addr, ConfigError, Transport
from snirelay.observe.log import LOG
from snirelay.wire.names import is_ip

EXPIRY_WARNING_DAYS = 14
DEFAULT_OFFER = ("h2", "http/1.1")
MAX_SESSIONS = 1024
# A backend that gave no resumable session, or refused the one it gave
# MAX_REFUSALS times in a row, is asked again this many seconds later.
NO_SESSION_RETRY = 60.0
MAX_REFUSALS = 2

# servername -> (certificate PEM, key PEM): made once, shared by forked workers
_SELF_SIGNED: dict[str, tuple[bytes, bytes]] = {}


def _self_signed(name: str) -> tuple[bytes, bytes]:
    if name not in _SELF_SIGNED:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        _SELF_SIGNED[name] = (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    return _SELF_SIGNED[name]


def _expiry_warning(path: str, place: str) -> None:
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return  # load_cert_chain already accepted it; nothing more to say
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left.total_seconds() <= 0:
        LOG.warning("%s: certificate %s expired %d day(s) ago", place, path, (-left).days)
    elif left.days < EXPIRY_WARNING_DAYS:
        LOG.warning("%s: certificate %s expires in %d day(s)", place, path, left.days)


def _check_pem(cert: str, key: str, place: str, what: str) -> None:
    """The certificate and key files exist, can be read and hold PEM blocks of their
    kind (ConfigError naming the key and the file otherwise). Once per transport."""
    key_what = "key" if what == "cert" else "client_key"
    for path, name, marker in (
        (cert, what, b"-----BEGIN CERTIFICATE-----"),
        (key, key_what, b"PRIVATE KEY-----"),
    ):
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 20)
        except FileNotFoundError:
            raise ConfigError(place, f"{name} file {path!r}: no such file") from None
        except OSError as exc:
            raise ConfigError(place, f"{name} file {path!r}: {exc.strerror or exc}") from None
        if marker not in head:
            kind = "certificate" if name == what else "private key"
            raise ConfigError(place, f"{name} file {path!r}: not a PEM {kind}")


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, place: str, what: str) -> None:
    """Load checked files (`_check_pem`) into `ctx`; a key that does not match, or a
    file changed since the check, is a ConfigError naming both files."""
    key_what = "key" if what == "cert" else "client_key"
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = exc.reason or str(exc)
        if why == "KEY_VALUES_MISMATCH":
            why = "the key does not match the certificate"
        raise ConfigError(place, f"{what} {cert!r} / {key_what} {key!r}: {why}") from None
    except OSError as exc:
        raise ConfigError(
            place, f"{what} {cert!r} / {key_what} {key!r}: {exc.strerror or exc}"
        ) from None


def _refuse(obj: Any, name: str | None, ctx: ssl.SSLContext) -> int:
    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE


class ServerTLS:
    __slots__ = ("place", "alpn", "tickets", "cert", "key", "pem", "_by_alpn", "refusing", "base")

    def __init__(
        self,
        t: Transport,
        place: str,
        *,
        tickets: bool = True,
        backend_alpn: tuple[str, ...] | None = None,
        warn: bool = True,
    ) -> None:
        """`backend_alpn`: when the route re-originates, the protocols its backend may
        choose (what it is offered at most): a context for each is made here, at start,
        not on the first connection that needs it."""
        self.place = place
        self.alpn = t.alpn
        self.tickets = tickets
        self.cert, self.key = t.cert, t.key
        self.pem: tuple[bytes, bytes] | None = None
        if t.servername is not None:
            self.pem = _self_signed(t.servername)
            if warn:
                LOG.warning(
                    "%s: serving a self-signed certificate for %s (clients must be told"
                    " to trust it; give cert=...;key=... for a real one)",
                    place,
                    t.servername,
                )
        if warn and t.ocsp is not None:
            LOG.warning(
                "%s: ocsp=%s is ignored: Python's ssl module cannot staple OCSP responses",
                place,
                t.ocsp,
            )
        if self.cert is not None and self.key is not None:
            _check_pem(self.cert, self.key, place, "cert")
        self.base = self._make(t.alpn)
        self._by_alpn: dict[str | None, ssl.SSLContext] = {}
        if backend_alpn is not None:
            for proto in (None, *backend_alpn):
                self._by_alpn[proto] = self._make((proto,) if proto else ())
        if warn and self.cert is not None:
            _expiry_warning(self.cert, place)
        self.refusing = self._make(())
        self.refusing.sni_callback = _refuse

    def _make(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if self.pem is not None:
            _load_pem(ctx, *self.pem)
        else:
            assert self.cert is not None and self.key is not None
            _load_chain(ctx, self.cert, self.key, self.place, "cert")
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if not self.tickets:
            ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2
            ctx.num_tickets = 0  # TLS 1.3
        return ctx

    def for_backend(self, proto: str | None) -> ssl.SSLContext:
        """The context that selects exactly `proto` (None: no ALPN) toward the client.
        The backend can only choose what it was offered, so `proto` is one of
        `backend_alpn`; anything else gets no ALPN."""
        ctx = self._by_alpn.get(proto)
        return ctx if ctx is not None else self._by_alpn.get(None, self.base)


def _load_pem(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="snirelay-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(cert, "wb") as f:
            f.write(cert_pem)
        ctx.load_cert_chain(cert, key)


class ClientTLS:
    __slots__ = ("place", "t", "allowed", "_by_offer", "sessions", "refusals")

    def __init__(
        self, t: Transport, place: str, remotes: tuple[Addr, ...], *, warn: bool = True
    ) -> None:
        self.place = place
        self.t = t
        self.allowed = t.alpn or DEFAULT_OFFER
        self._by_offer: dict[tuple[str, ...], ssl.SSLContext] = {}
        # (backend address, context) -> the session to resume, or when to ask again a
        # backend that gave none (a monotonic time)
        self.sessions: OrderedDict[tuple[Any, ssl.SSLContext], ssl.SSLSession | float] = (
            OrderedDict()
        )
        # the keys whose kept session the backend refused, and how many times in a row
        self.refusals: dict[tuple[Any, ssl.SSLContext], int] = {}
        if t.client_cert is not None and t.client_key is not None:
            _check_pem(t.client_cert, t.client_key, place, "client_cert")
        self.context(())  # build one now: a bad ca= or client certificate fails the start
        if warn:
            if t.insecure:
                LOG.warning("%s: insecure: the backend's certificate is not verified", place)
            if t.sni is None and any(is_ip(a.host) for a in remotes):
                LOG.warning(
                    "%s: no sni= and the remote is an IP address: a client that sends no"
                    " SNI reaches the backend with no SNI either",
                    place,
                )
            if t.zero_rtt:
                LOG.info("%s: 0rtt is accepted for realm compatibility and does nothing", place)

    def context(self, offer: tuple[str, ...]) -> ssl.SSLContext:
        ctx = self._by_offer.get(offer)
        if ctx is not None:
            return ctx
        t = self.t
        if t.insecure:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            try:
                ctx = ssl.create_default_context(cafile=t.ca)
            except (OSError, ssl.SSLError) as exc:
                why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ConfigError(self.place, f"ca file {t.ca!r}: {why}") from None
            # the chain is OpenSSL's to verify; the name is checked by the side after
            # the handshake (net.tls.check_name), so a mismatch can name both names
            ctx.check_hostname = False
        if t.client_cert is not None and t.client_key is not None:
            _load_chain(ctx, t.client_cert, t.client_key, self.place, "client_cert")
        if offer:
            ctx.set_alpn_protocols(list(offer))
        self._by_offer[offer] = ctx
        return ctx

    def offer(self, client_alpn: tuple[str, ...] | None) -> tuple[str, ...]:
        """What to offer the backend: the client's list as far as this upstream allows
        (the transport's own list when the client's is not known)."""
        if client_alpn is None:
            return self.t.alpn
        return tuple(p for p in client_alpn if p in self.allowed)

    def server_hostname(self, client_sni: str | None, remote_host: str) -> str | None:
        """The name to send as SNI and verify (an IP: no SNI, the IP verified)."""
        sni = self.t.sni
        if sni == "$sni":
            return client_sni
        if sni is not None:
            return sni
        if client_sni is not None:
            return client_sni
        return None if is_ip(remote_host) else remote_host

    def session(self, sa: Any, ctx: ssl.SSLContext) -> ssl.SSLSession | None:
        kept = self.sessions.get((sa, ctx))
        return None if isinstance(kept, float) else kept

    def finished(self, sa: Any, obj: Any, version: str, now: float, *, offered: bool) -> None:
        """A connection to backend `sa` ends (`obj`: its SSL object; `offered`: it
        offered a kept session): keep its session for the next one, when that is
        worth it. Reading `session` copies the session
        (Python's ssl writes it out and parses it back, certificate included: ~160 us
        per read on OpenSSL 3.0 here), so a session is read only when none is kept, or
        the kept one was not accepted; a resumed connection leaves the kept one in
        place (TLS 1.3 tickets and TLS 1.2 sessions serve many connections), and so
        does one that began before it was kept (it offered none). A backend
        that gave nothing to resume (TLS 1.3 with no ticket), or that refused what it
        gave MAX_REFUSALS times in a row (tickets it cannot take back: no session
        cache, keys of another process), is asked again after NO_SESSION_RETRY
        seconds, not on every connection."""
        key = (sa, obj.context)
        kept = self.sessions.get(key)
        if isinstance(kept, float):
            if now < kept:
                return
        elif kept is not None:
            if not offered:
                return
            if obj.session_reused:
                if self.refusals:
                    self.refusals.pop(key, None)
                return
            refused = self.refusals.get(key, 0) + 1
            if refused >= MAX_REFUSALS:
                self.refusals.pop(key, None)
                self.sessions[key] = now + NO_SESSION_RETRY
                self.sessions.move_to_end(key)
                return
            self.refusals[key] = refused
        session = obj.session
        if session is not None and (session.has_ticket or version == "TLSv1.2"):
            self.sessions[key] = session
        else:
            self.sessions[key] = now + NO_SESSION_RETRY
        self.sessions.move_to_end(key)
        while len(self.sessions) > MAX_SESSIONS:
            gone, _ = self.sessions.popitem(last=False)
            self.refusals.pop(gone, None)
