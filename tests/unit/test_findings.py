"""`snirelay check`'s findings on made-up probes: each problem is named once, with the
severity the issue defines (error: clients using the name fail; warning: only clients
without SNI or by IP), and the text report of one fixed setup is golden
(tests/unit/golden/check.txt; rewrite with SNIRELAY_GOLDEN_UPDATE=1 when a wording
change is meant)."""

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
