"""`snirelay check`'s findings on made-up probes: each problem is named once, with the
severity the issue defines (error: clients using the name fail; warning: only clients
without SNI or by IP), and the text report of one fixed setup is golden
(tests/unit/golden/check.txt; rewrite with SNIRELAY_GOLDEN_UPDATE=1 when a wording
change is meant). With `--api`, the probes are found in made-up handshake lists of the
relay and what the relay received is compared with what they sent."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from snirelay.diagnose import check
from snirelay.diagnose.findings import (
    V_DEPTH_ZERO_SELF_SIGNED,
    V_SELF_SIGNED_IN_CHAIN,
    V_UNABLE_TO_GET_ISSUER_LOCALLY,
    Finding,
    Target,
    findings,
)
from snirelay.diagnose.probe import Cert, Probe, describe_answer
from snirelay.diagnose.sightings import Relay, match, relay_notes

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
GOLDEN = Path(__file__).parent / "golden"


def cert(
    *names: str,
    days: int = 90,
    issuer: str = "CN=Test CA",
    self_signed: bool = False,
    is_ca: bool = False,
    ca_issuers: tuple[str, ...] = (),
    start_days: int = -10,
) -> Cert:
    sans = [("IP Address" if n[0].isdigit() else "DNS", n) for n in names]
    subject = f"CN={names[0]}" if names else "CN=none"
    return Cert(
        subject=subject,
        issuer=subject if self_signed else issuer,
        sans=sans,
        not_before=NOW + datetime.timedelta(days=start_days),
        not_after=NOW + datetime.timedelta(days=days),
        key="EC P-256",
        self_signed=self_signed,
        is_ca=is_ca,
        ca_issuers=list(ca_issuers),
        fingerprint=("-".join(names) + f"{days}{self_signed}").encode().hex(),
    )


def ok(sni: str | None, *chain: Cert, verified: bool = True, code: int | None = None) -> Probe:
    p = Probe("sni" if sni else "no-sni", "app.example.com", 443, sni)
    p.address = "192.0.2.10:443"
    p.version, p.cipher, p.alpn = "TLSv1.3", "TLS_AES_128_GCM_SHA256", "h2"
    p.connect_ms, p.handshake_ms = 1.0, 2.0
    p.chain = list(chain)
    p.verified = verified
    if not verified:
        p.verify_code = code
        p.verify_error = {18: "self-signed certificate", 19: "self-signed certificate in"
                          " certificate chain", 20: "unable to get local issuer certificate"
                          }.get(code or 0, "certificate verify failed")  # fmt: skip
    return p


def failed(sni: str | None, outcome: str, error: str, alert: str | None = None) -> Probe:
    p = Probe("sni" if sni else "no-sni", "app.example.com", 443, sni, outcome=outcome)
    p.address = "192.0.2.10:443"
    p.error, p.alert = error, alert
    return p


TARGET = Target("app.example.com", 443, "app.example.com")
APP = cert("app.example.com")


def codes(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in found]


def test_a_good_server_has_nothing_to_say() -> None:
    assert findings(TARGET, [ok("app.example.com", APP), ok(None, APP)], NOW) == []


def test_a_different_certificate_without_sni_is_a_warning_with_the_three_ways() -> None:
    found = findings(TARGET, [ok("app.example.com", APP), ok(None, cert("default.example.com"))],
                     NOW)  # fmt: skip
    assert codes(found) == [("no-sni-different-certificate", "warning")]
    f = found[0]
    assert "default.example.com" in f.message and "app.example.com" in f.message
    assert f.fix.startswith("A: ") and "B: " in f.fix and 'sni=app.example.com"' in f.fix
    assert f.confirm.endswith("-noservername -verify_return_error -brief </dev/null")
    assert check.exit_code(found, strict=False) == 0
    assert check.exit_code(found, strict=True) == 1


def test_a_refusal_without_sni_names_the_alert() -> None:
    bare = failed(None, "alert", "refused", alert="unrecognized_name")
    found = findings(TARGET, [ok("app.example.com", APP), bare], NOW)
    assert codes(found) == [("no-sni-refused", "warning")]
    assert "alert unrecognized_name" in found[0].message


def test_a_refusal_with_the_name_is_an_error_with_a_fix_for_the_alert() -> None:
    named = failed("app.example.com", "alert", "refused", alert="certificate_required")
    found = findings(TARGET, [named, ok(None, APP)], NOW)
    assert codes(found)[0] == ("handshake-refused", "error")
    assert "client certificate" in found[0].fix
    assert check.exit_code(found, strict=False) == 1


def test_a_certificate_for_another_name_is_an_error() -> None:
    other = cert("other.example.com")
    found = findings(TARGET, [ok("app.example.com", other), ok(None, other)], NOW)
    assert codes(found) == [("name-not-covered", "error")]
    assert "other.example.com" in found[0].message


def test_a_wildcard_covers_one_label_only() -> None:
    wild = cert("*.example.com")
    t = Target("a.b.example.com", 443, "a.b.example.com")
    found = findings(t, [ok("a.b.example.com", wild), ok(None, wild)], NOW)
    assert codes(found) == [("name-not-covered", "error")]
    t = Target("b.example.com", 443, "b.example.com")
    assert findings(t, [ok("b.example.com", wild), ok(None, wild)], NOW) == []


@pytest.mark.parametrize(
    ("leaf", "code", "want"),
    [
        (cert("app.example.com", days=-3), 10, "expired"),
        (cert("app.example.com", start_days=2), 9, "not-yet-valid"),
        (cert("app.example.com", self_signed=True), V_DEPTH_ZERO_SELF_SIGNED, "self-signed"),
        (cert("app.example.com", ca_issuers=("http://ca.invalid/i.crt",)),
         V_UNABLE_TO_GET_ISSUER_LOCALLY, "chain-incomplete"),
        (cert("app.example.com"), V_UNABLE_TO_GET_ISSUER_LOCALLY, "unknown-ca"),
    ],
)  # fmt: skip
def test_chain_and_date_problems_are_errors_once(leaf: Cert, code: int, want: str) -> None:
    probes = [ok("app.example.com", leaf, verified=False, code=code),
              ok(None, leaf, verified=False, code=code)]  # fmt: skip
    found = findings(TARGET, probes, NOW)
    assert codes(found) == [(want, "error")]


def test_a_root_sent_along_but_not_trusted_is_an_unknown_ca() -> None:
    root = cert("Private Root", self_signed=True, is_ca=True)
    chain = (APP, root)
    probes = [ok("app.example.com", *chain, verified=False, code=V_SELF_SIGNED_IN_CHAIN),
              ok(None, *chain, verified=False, code=V_SELF_SIGNED_IN_CHAIN)]  # fmt: skip
    found = findings(TARGET, probes, NOW)
    assert codes(found) == [("unknown-ca", "error")]
    assert "CN=Private Root" in found[0].message


def test_expiring_soon_is_a_warning() -> None:
    soon = cert("app.example.com", days=5)
    assert codes(findings(TARGET, [ok("app.example.com", soon), ok(None, soon)], NOW)) == [
        ("expires-soon", "warning")
    ]


def test_plain_http_on_the_port_says_so() -> None:
    p = failed("app.example.com", "not-tls", "x: " + describe_answer(b"HTTP/1.1 400 Bad\r\n"))
    p.answer = b"HTTP/1.1 400 Bad Request\r\n"
    bare = failed(None, "not-tls", p.error or "")
    found = findings(TARGET, [p, bare], NOW)
    assert codes(found) == [("not-tls", "error")]
    assert "plain HTTP" in found[0].message and "http://app.example.com:443/" in found[0].fix


def test_nothing_listening_is_one_error() -> None:
    probes = [failed("app.example.com", "connect-refused", "refused"),
              failed(None, "connect-refused", "refused")]  # fmt: skip
    assert codes(findings(TARGET, probes, NOW)) == [("connect-refused", "error")]


def test_by_ip_without_a_name_the_uncovered_address_is_a_warning() -> None:
    t = Target("192.0.2.10", 443, None)
    found = findings(t, [ok(None, APP)], NOW)
    assert codes(found) == [("address-not-covered", "warning")]
    assert "192.0.2.10" in found[0].message
    refused = findings(t, [failed(None, "connect-refused", "refused")], NOW)
    assert codes(refused) == [("connect-refused", "error")]  # no client gets through


def test_connect_ip_asks_whether_clients_by_that_ip_are_covered() -> None:
    t = Target("app.example.com", 443, "app.example.com", connect="192.0.2.10")
    found = findings(t, [ok("app.example.com", APP), ok(None, APP)], NOW)
    assert codes(found) == [("address-not-covered", "warning")]
    assert "--resolve app.example.com:443:192.0.2.10" in found[0].fix
    covered = cert("app.example.com", "192.0.2.10")
    assert findings(t, [ok("app.example.com", covered), ok(None, covered)], NOW) == []


def test_errors_come_before_warnings() -> None:
    other = cert("other.example.com")
    found = findings(TARGET, [ok("app.example.com", other), ok(None, cert("d.example.com"))],
                     NOW)  # fmt: skip
    assert [f.severity for f in found] == ["error", "warning"]


def test_describe_answer_names_the_service() -> None:
    assert describe_answer(b"SSH-2.0-OpenSSH_9.2\r\n").startswith("SSH")
    assert "not a TLS record" in describe_answer(b"\x00\x01\x02")


def test_the_text_report_of_one_setup_is_golden() -> None:
    """The seed's case: the server has a certificate for its name and another default;
    probed through the relay's IP with --connect."""
    t = Target("emby.example.com", 8920, "emby.example.com", connect="192.0.2.1")
    probes = [ok("emby.example.com", cert("emby.example.com", days=60)),
              ok(None, cert("default.example.com", days=60))]  # fmt: skip
    probes[0].host = probes[1].host = "emby.example.com"
    probes[0].address = probes[1].address = "192.0.2.1:8920"
    text = check.render(t, probes, findings(t, probes, NOW), NOW, timing=False)
    golden = GOLDEN / "check.txt"
    if os.environ.get("SNIRELAY_GOLDEN_UPDATE"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


# -- the relay's view (check --api) ------------------------------------------------------

API = "http://127.0.0.1:9090"
T0 = 1_796_000_000.0  # the probes' unix time


def via(p: Probe, local: str, retry: str | None = None) -> Probe:
    """`p` as made from the local address `local` (and `retry`, its second connection)."""
    p.local, p.local_retry, p.started = local, retry, T0
    return p


def entry(client: str, sni: str | None, **kw: object) -> dict[str, object]:
    """One handshake as GET /handshakes lists it; passthrough and fine unless told."""
    e: dict[str, object] = {
        "time": T0 + 0.01, "client": client, "sni": sni, "alpn": [],
        "endpoint": "0.0.0.0:443", "route": "endpoints[0].routes[0]", "mode": "passthrough",
        "upstream_sni": sni, "reoriginated": False, "verified": None,
        "outcome": "passthrough",
    }  # fmt: skip
    e.update(kw)
    return e


def probes_from(local_sni: str = "198.51.100.7:40001", local_bare: str = "198.51.100.7:40002"
                ) -> list[Probe]:  # fmt: skip
    return [via(ok("app.example.com", APP), local_sni), via(ok(None, APP), local_bare)]


def relay(*entries: dict[str, object]) -> Relay:
    return Relay(API, entries=tuple(entries))


def test_probes_the_relay_saw_as_sent_have_nothing_to_say() -> None:
    probes = probes_from()
    listed = relay(
        entry("203.0.113.9:5555", "other.example.com"),  # another client
        entry("198.51.100.7:40002", None),
        entry("198.51.100.7:40001", "app.example.com"),
    )
    assert findings(TARGET, probes, NOW, listed) == []
    seen = match(probes, listed.entries or ())
    assert [(s.probe.label, s.entry["client"], s.same_address) for s in seen] == [
        ("sni", "198.51.100.7:40001", True), ("no-sni", "198.51.100.7:40002", True)]  # fmt: skip
    notes = relay_notes(probes[0], listed)
    assert notes == ["relay saw: SNI app.example.com, sent upstream SNI app.example.com, route"
                     " endpoints[0].routes[0] (passthrough), outcome passthrough"]  # fmt: skip
    text = check.render(TARGET, probes, [], NOW, timing=False, relay=listed)
    assert "  relay saw: no SNI, sent upstream no SNI" in text
    assert f"relay API {API}: 3 recent handshake(s) listed" in text


def test_the_newest_entry_of_the_port_is_the_probe() -> None:
    probes = probes_from()
    old = entry("198.51.100.7:40001", None, time=T0 - 3600)  # a client of an hour ago
    stale = entry("198.51.100.7:40001", None, time=T0 - 10, outcome="no-route")
    listed = relay(entry("198.51.100.7:40001", "app.example.com"), stale, old)
    assert match(probes[:1], listed.entries or ())[0].entry["outcome"] == "passthrough"
    # only a handshake older than the probe by more than SEEN_WINDOW is never it
    assert match(probes[:1], (old,)) == []


def test_the_sni_stripped_in_between_is_an_error() -> None:
    probes = probes_from()
    listed = relay(entry("198.51.100.7:40001", None, route="default"),
                   entry("198.51.100.7:40002", None))  # fmt: skip
    found = findings(TARGET, probes, NOW, listed)
    assert codes(found) == [("sni-changed-in-between", "error")]
    f = found[0]
    assert "sent SNI app.example.com and the relay received none" in f.message
    assert "strips" in f.message and "--connect 127.0.0.1" in f.fix
    assert f.confirm.endswith(f"curl -s '{API}/handshakes?limit=5'")
    assert check.exit_code(found, strict=False) == 1


def test_an_sni_rewritten_or_added_in_between_is_named() -> None:
    probes = probes_from()
    listed = relay(entry("198.51.100.7:40001", "api.example.com"),
                   entry("198.51.100.7:40002", "added.example.com"))  # fmt: skip
    found = findings(TARGET, probes, NOW, listed)
    assert codes(found) == [("sni-changed-in-between", "error"),
                            ("sni-changed-in-between", "warning")]  # fmt: skip
    assert "received SNI api.example.com" in found[0].message and "rewrites" in found[0].message
    assert "sent no SNI and the relay received SNI added.example.com" in found[1].message


def test_the_case_and_a_trailing_dot_are_not_a_change() -> None:
    probes = probes_from()
    listed = relay(entry("198.51.100.7:40001", "App.Example.COM."),
                   entry("198.51.100.7:40002", None))  # fmt: skip
    assert findings(TARGET, probes, NOW, listed) == []


def test_the_relay_re_originating_with_its_own_sni_is_words_not_a_finding() -> None:
    probes = probes_from()
    listed = relay(
        entry("198.51.100.7:40001", "app.example.com", mode="terminate+reoriginate",
              upstream_sni="backend.internal", reoriginated=True, verified=True, outcome="ok"),
        entry("198.51.100.7:40002", None, mode="terminate+reoriginate",
              upstream_sni="backend.internal", reoriginated=True, verified=True, outcome="ok"),
    )  # fmt: skip
    assert findings(TARGET, probes, NOW, listed) == []
    notes = relay_notes(probes[0], listed)
    assert notes[0].startswith("relay saw: SNI app.example.com, sent upstream SNI"
                               " backend.internal, route")  # fmt: skip
    assert "re-originated with SNI backend.internal (sni= in its config)" in notes[1]
    assert "working as configured" in notes[1]
    assert "or its remote's name" in relay_notes(probes[1], listed)[1]


def test_a_failure_the_relay_recorded_is_named_with_explain() -> None:
    probes = probes_from()
    probes[0].outcome, probes[0].chain = "closed", []  # the relay closed: its backend failed
    failure = "tls-backend: certificate verify failed"
    listed = relay(
        entry("198.51.100.7:40001", "app.example.com", mode="terminate+reoriginate",
              upstream_sni="app.example.com", reoriginated=True, verified=False,
              outcome=failure),
        entry("198.51.100.7:40002", None, route="default", outcome="no-route"),
    )  # fmt: skip
    found = [f for f in findings(TARGET, probes, NOW, listed) if f.code == "relay-outcome"]
    assert codes(found) == [("relay-outcome", "error"), ("relay-outcome", "warning")]
    assert failure in found[0].message and "ca= and sni=" in found[0].fix
    assert all(f.confirm == "snirelay explain -c CONFIG --probe" for f in found)
    assert "no route for no SNI" in found[1].message and 'when = "no_sni"' in found[1].fix


def test_the_first_connection_refused_by_the_probe_itself_is_no_relay_failure() -> None:
    """A certificate that does not verify: the probe closes the first connection and
    handshakes again unverified; the relay's entry for the second is the one read."""
    p = via(ok("app.example.com", APP), "198.51.100.7:40001", retry="198.51.100.7:40003")
    mine = entry("198.51.100.7:40001", "app.example.com", mode="terminate",
                 outcome="tls-client: tlsv1 alert unknown ca")  # fmt: skip
    again = entry("198.51.100.7:40003", "app.example.com", mode="terminate", outcome="ok")
    assert findings(TARGET, [p], NOW, relay(again, mine)) == []
    assert match([p], (again, mine))[0].local == "198.51.100.7:40003"
    # only the first listed: no relay-outcome for the probe's own refusal, and a word
    assert findings(TARGET, [p], NOW, relay(mine)) == []
    assert "first connection" in relay_notes(p, relay(mine))[1]


def test_through_nat_the_port_matches_and_the_note_says_so() -> None:
    probes = probes_from()
    listed = relay(entry("10.0.0.1:40001", "app.example.com"), entry("10.0.0.1:40002", None))
    assert findings(TARGET, probes, NOW, listed) == []
    notes = relay_notes(probes[0], listed)
    assert "matched by the port only" in notes[1] and "10.0.0.1:40001" in notes[1]
    # an IPv4 client seen by a dual-stack listener is the same address
    mapped = relay(entry("[::ffff:198.51.100.7]:40001", "app.example.com"))
    assert match(probes[:1], mapped.entries or ())[0].same_address


def test_a_probe_not_listed_is_a_warning_with_what_to_check() -> None:
    probes = probes_from()
    listed = relay(entry("198.51.100.7:40001", "app.example.com"))
    found = findings(TARGET, probes, NOW, listed)
    assert codes(found) == [("probe-not-seen", "warning")]
    f = found[0]
    assert "the probe (no SNI from 198.51.100.7:40002)" in f.message
    assert "port 443" not in f.message  # its handshakes came in on 443: no hint
    assert "another address and port" in f.fix and "plain forward" in f.fix
    other = relay(entry("192.0.2.5:1234", "x.example.com", endpoint="0.0.0.0:8443"))
    found = findings(TARGET, probes, NOW, other)
    assert codes(found) == [("probe-not-seen", "warning")]
    assert "neither probe" in found[0].message
    assert "none of its handshakes came in on port 443" in found[0].message
    assert relay_notes(probes[0], other) == [
        "relay saw: no handshake from 198.51.100.7:40001 (see probe-not-seen below)"]  # fmt: skip


@pytest.mark.parametrize(
    ("problem", "error", "token", "code", "words"),
    [
        ("unreachable", "connection refused: nothing listens there", False, "api-unreachable",
         "did not answer (connection refused"),
        ("refused", "HTTP 401: unauthorized", False, "api-refused", "no token was sent"),
        ("refused", "HTTP 401: unauthorized", True, "api-refused", "the token sent is not"),
        ("bad-answer", "not JSON (it starts '<html>')", False, "api-bad-answer",
         "not with the relay's list"),
    ],
)  # fmt: skip
def test_an_api_that_gives_no_list_is_a_warning(
    problem: str, error: str, token: bool, code: str, words: str
) -> None:
    failed_api = Relay(API, error=error, problem=problem, token=token)
    found = findings(TARGET, probes_from(), NOW, failed_api)
    assert codes(found) == [(code, "warning")]
    assert words in found[0].message and API in found[0].message
    assert relay_notes(probes_from()[0], failed_api) == []
    if problem == "refused":
        assert "SNIRELAY_API_TOKEN" in found[0].fix
        assert "Authorization: Bearer $SNIRELAY_API_TOKEN" in found[0].confirm


def test_without_a_probe_that_connected_the_api_is_not_asked() -> None:
    probes = [failed("app.example.com", "connect-refused", "refused"),
              failed(None, "connect-refused", "refused")]  # fmt: skip
    not_asked = Relay(API)
    assert codes(findings(TARGET, probes, NOW, not_asked)) == [("connect-refused", "error")]
    doc = check.as_document(TARGET, probes, [], NOW, not_asked)
    assert doc["api"] == {"url": API, "asked": False, "matched": [], "error": None}
    assert check.as_document(TARGET, probes, [], NOW)["api"] is None


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["a.example.com:443", "--api", "ftp://127.0.0.1:9090"], "http:// or https:// URL"),
        (["a.example.com:443", "--api", "127.0.0.1:9090"], "http:// or https:// URL"),
        (["a.example.com:443", "--api", "http://h:port"], "http:// or https:// URL"),
        (["a.example.com:443", "--api-token", "t0k"], "--api-token: give --api URL too"),
        (["a.example.com:443", "--api", API, "--api-token", "t\x01k"], "printable ASCII"),
    ],
)  # fmt: skip
def test_api_usage_errors_are_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_the_token_comes_from_the_environment_without_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNIRELAY_API_TOKEN", "from-env")
    assert check.parse(["a.example.com:443", "--api", API + "/"]).token == "from-env"
    assert check.parse(["a.example.com:443", "--api", API + "/"]).api == API
    opts = check.parse(["a.example.com:443", "--api", API, "--api-token", "flag"])
    assert opts.token == "flag"
    assert check.parse(["a.example.com:443"]).token is None  # no --api: not read
