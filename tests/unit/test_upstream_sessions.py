"""Which upstream TLS sessions the relay keeps for resumption (net.tlsconf.ClientTLS).

Reading `SSLObject.session` copies the session (~160 us on OpenSSL 3.0), so the relay
reads it only when that can pay: these tests count the reads on a stand-in object."""

from __future__ import annotations

import ssl
from typing import Any

import trustme

from snirelay.config.transport import parse_transport
from snirelay.net.tlsconf import NO_SESSION_RETRY, ClientTLS

SA = ("127.0.0.1", 8443)


class Finished:
    """What ClientTLS.finished reads of a finished backend connection."""

    def __init__(self, context: ssl.SSLContext, session: Any, reused: bool) -> None:
        self.context = context
        self.session_reused = reused
        self._session = session
        self.reads = 0

    @property
    def session(self) -> Any:
        self.reads += 1
        return self._session


class Session:
    def __init__(self, has_ticket: bool) -> None:
        self.has_ticket = has_ticket


def client_tls(tmp_path: Any) -> tuple[ClientTLS, ssl.SSLContext]:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    ctls = ClientTLS(parse_transport(f"tls;sni=b.example.com;ca={ca}", "t", "remote"), "t", ())
    return ctls, ctls.context(())


def test_a_session_is_read_once_and_kept_while_it_resumes(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    first = Finished(ctx, Session(has_ticket=True), reused=False)
    ctls.finished(SA, first, "TLSv1.3", now=0.0)  # type: ignore[arg-type]
    assert first.reads == 1 and ctls.session(SA, ctx) is first._session
    resumed = Finished(ctx, Session(has_ticket=True), reused=True)
    ctls.finished(SA, resumed, "TLSv1.3", now=1.0)  # type: ignore[arg-type]
    assert resumed.reads == 0 and ctls.session(SA, ctx) is first._session


def test_a_refused_session_is_replaced_by_the_new_one(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    ctls.finished(SA, Finished(ctx, Session(True), reused=False), "TLSv1.3", now=0.0)  # type: ignore[arg-type]
    fresh = Finished(ctx, Session(True), reused=False)  # the kept one was not accepted
    ctls.finished(SA, fresh, "TLSv1.3", now=1.0)  # type: ignore[arg-type]
    assert fresh.reads == 1 and ctls.session(SA, ctx) is fresh._session


def test_a_backend_without_tickets_is_asked_again_only_later(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    none = Finished(ctx, Session(has_ticket=False), reused=False)
    ctls.finished(SA, none, "TLSv1.3", now=0.0)  # type: ignore[arg-type]
    assert none.reads == 1 and ctls.session(SA, ctx) is None
    soon = Finished(ctx, Session(has_ticket=True), reused=False)
    ctls.finished(SA, soon, "TLSv1.3", now=NO_SESSION_RETRY / 2)  # type: ignore[arg-type]
    assert soon.reads == 0 and ctls.session(SA, ctx) is None
    later = Finished(ctx, Session(has_ticket=True), reused=False)
    ctls.finished(SA, later, "TLSv1.3", now=NO_SESSION_RETRY + 1)  # type: ignore[arg-type]
    assert later.reads == 1 and ctls.session(SA, ctx) is later._session


def test_a_tls12_session_without_a_ticket_is_kept(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    by_id = Finished(ctx, Session(has_ticket=False), reused=False)  # server-side cache
    ctls.finished(SA, by_id, "TLSv1.2", now=0.0)  # type: ignore[arg-type]
    assert ctls.session(SA, ctx) is by_id._session
