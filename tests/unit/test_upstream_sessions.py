"""Which upstream TLS sessions the relay keeps for resumption (net.tlsconf.ClientTLS).

Reading `SSLObject.session` copies the session (~160 us on OpenSSL 3.0), so the relay
reads it only when that can pay: these tests count the reads on a stand-in object."""

from __future__ import annotations

import ssl
from typing import Any

import trustme

from snirelay.config.transport import parse_transport
from snirelay.net.tlsconf import MAX_REFUSALS, NO_SESSION_RETRY, ClientTLS

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
    ctls.finished(SA, first, "TLSv1.3", now=0.0, offered=False)
    assert first.reads == 1 and ctls.session(SA, ctx) is first._session
    resumed = Finished(ctx, Session(has_ticket=True), reused=True)
    ctls.finished(SA, resumed, "TLSv1.3", now=1.0, offered=True)
    assert resumed.reads == 0 and ctls.session(SA, ctx) is first._session


def test_a_refused_session_is_replaced_by_the_new_one(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    ctls.finished(SA, Finished(ctx, Session(True), reused=False), "TLSv1.3", now=0.0, offered=False)
    fresh = Finished(ctx, Session(True), reused=False)  # the kept one was not accepted
    ctls.finished(SA, fresh, "TLSv1.3", now=1.0, offered=True)
    assert fresh.reads == 1 and ctls.session(SA, ctx) is fresh._session


def test_a_backend_without_tickets_is_asked_again_only_later(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    none = Finished(ctx, Session(has_ticket=False), reused=False)
    ctls.finished(SA, none, "TLSv1.3", now=0.0, offered=False)
    assert none.reads == 1 and ctls.session(SA, ctx) is None
    soon = Finished(ctx, Session(has_ticket=True), reused=False)
    ctls.finished(SA, soon, "TLSv1.3", now=NO_SESSION_RETRY / 2, offered=False)
    assert soon.reads == 0 and ctls.session(SA, ctx) is None
    later = Finished(ctx, Session(has_ticket=True), reused=False)
    ctls.finished(SA, later, "TLSv1.3", now=NO_SESSION_RETRY + 1, offered=False)
    assert later.reads == 1 and ctls.session(SA, ctx) is later._session


def test_a_tls12_session_without_a_ticket_is_kept(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    by_id = Finished(ctx, Session(has_ticket=False), reused=False)  # server-side cache
    ctls.finished(SA, by_id, "TLSv1.2", now=0.0, offered=False)
    assert ctls.session(SA, ctx) is by_id._session


def test_a_backend_that_keeps_refusing_its_sessions_is_asked_again_only_later(
    tmp_path: Any,
) -> None:
    """Tickets the backend cannot take back (no session cache): after MAX_REFUSALS
    refusals in a row no session is read (nor offered) until NO_SESSION_RETRY."""
    ctls, ctx = client_tls(tmp_path)
    ctls.finished(SA, Finished(ctx, Session(True), reused=False), "TLSv1.3", 0.0, offered=False)
    reads = []
    for i in range(MAX_REFUSALS + 2):
        refused = Finished(ctx, Session(True), reused=False)
        ctls.finished(
            SA, refused, "TLSv1.3", now=1.0 + i, offered=ctls.session(SA, ctx) is not None
        )
        reads.append(refused.reads)
    assert reads == [1] * (MAX_REFUSALS - 1) + [0, 0, 0], reads
    assert ctls.session(SA, ctx) is None  # nothing offered meanwhile
    later = Finished(ctx, Session(True), reused=False)
    ctls.finished(SA, later, "TLSv1.3", now=NO_SESSION_RETRY + 10, offered=False)
    assert later.reads == 1 and ctls.session(SA, ctx) is later._session


def test_one_refusal_then_a_resumption_starts_the_count_again(tmp_path: Any) -> None:
    ctls, ctx = client_tls(tmp_path)
    ctls.finished(SA, Finished(ctx, Session(True), reused=False), "TLSv1.3", 0.0, offered=False)
    for i in range(3 * MAX_REFUSALS):  # refused, resumed, refused, resumed...
        reused = i % 2 == 1
        ctls.finished(SA, Finished(ctx, Session(True), reused), "TLSv1.3", 1.0 + i, offered=True)
    assert ctls.session(SA, ctx) is not None


def test_a_connection_that_offered_nothing_leaves_the_kept_session(tmp_path: Any) -> None:
    """It began before a session was kept: not a refusal, and nothing to read."""
    ctls, ctx = client_tls(tmp_path)
    first = Finished(ctx, Session(True), reused=False)
    ctls.finished(SA, first, "TLSv1.3", now=0.0, offered=False)
    for i in range(MAX_REFUSALS + 1):
        early = Finished(ctx, Session(True), reused=False)
        ctls.finished(SA, early, "TLSv1.3", now=0.1 + i, offered=False)
        assert early.reads == 0
    assert ctls.session(SA, ctx) is first._session
