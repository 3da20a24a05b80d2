"""`snirelay explain` on configs written to trip each warning, on the examples, and one
golden text report (tests/unit/golden/explain.txt; rewrite with
SNIRELAY_GOLDEN_UPDATE=1 when a wording change is meant). No network: explain without
--probe reads the config and the certificate files only (--probe is tested against
nginx in tests/integration/test_doctor.py)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import pytest
import trustme

from snirelay.diagnose import explain
from snirelay.diagnose.review import review

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime.datetime.now(datetime.UTC)


def run(tmp_path: Path, text: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = explain.main(["-c", str(path), *args])
    return code, out.getvalue(), err.getvalue()


def warnings(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    code, out, _ = run(tmp_path, text, "--json")
    doc = json.loads(out)
    assert code == (1 if doc["warnings"] else 0)
    return [(w["code"], w["place"]) for w in doc["warnings"]]


EP = '[[endpoints]]\nlisten = "127.0.0.1:8443"\nremote = "127.0.0.1:9443"\n'


def test_a_plain_forward_has_nothing_to_warn_about(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, EP)
    assert code == 0
    assert "forward: bytes relayed untouched" in out and "nothing to warn about" in out


def test_a_tls_remote_given_as_an_ip_without_sni(tmp_path: Path) -> None:
    found = warnings(tmp_path, EP + 'remote_transport = "tls"\n')
    assert found == [("remote-ip-no-sni", "endpoints[0].remote_transport")]
    assert warnings(tmp_path, EP + 'remote_transport = "tls;sni=emby.example.com"\n') == []


def test_insecure(tmp_path: Path) -> None:
    found = warnings(tmp_path, EP + 'remote_transport = "tls;sni=a.example.com;insecure"\n')
    assert found == [("insecure", "endpoints[0].remote_transport")]


ROUTE = '  [[endpoints.routes]]\n  server_names = [{names}]\n  remote = "127.0.0.1:{port}"\n'


def routes(*specs: tuple[str, int, str]) -> str:
    out = EP
    for names, port, extra in specs:
        out += ROUTE.format(names=names, port=port) + extra
    return out


def test_a_route_behind_a_wildcard_is_shadowed(tmp_path: Path) -> None:
    text = routes(('"*.example.com"', 9001, ""), ('"a.example.com", "b.example.org"', 9002, ""))
    found = warnings(tmp_path, text)
    assert found == [("route-shadowed", "endpoints[0].routes[1]")]
    _, out, _ = run(tmp_path, text)
    assert "a.example.com (by endpoints[0].routes[0])" in out
    # the exact name first: nothing is shadowed (each route gets its names)
    text = routes(('"a.example.com"', 9002, ""), ('"*.example.com"', 9001, ""))
    assert warnings(tmp_path, text) == []


def test_every_name_taken_says_the_route_is_never_chosen(tmp_path: Path) -> None:
    text = routes(('"*.example.com"', 9001, ""), ('"a.example.com"', 9002, ""))
    _, out, _ = run(tmp_path, text)
    assert "never chosen" in out


def test_a_repeated_name_or_condition_is_a_config_error(tmp_path: Path) -> None:
    """The loader refuses what would be shadowed outright: explain says the same."""
    code, _, err = run(tmp_path, routes(('"a.example.com"', 1, ""), ('"A.example.com."', 2, "")))
    assert code == 2 and "already listed" in err
    when = '  [[endpoints.routes]]\n  when = "no_sni"\n  remote = "127.0.0.1:9001"\n'
    code, _, err = run(tmp_path, EP + when + when)
    assert code == 2 and "already handled" in err


def wildcard_files(tmp_path: Path) -> str:
    """cert=...;key=... for a certificate that covers *.example.com."""
    leaf = trustme.CA().issue_cert("*.example.com")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "wild.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "wild.key"))
    return f"cert={tmp_path}/wild.crt;key={tmp_path}/wild.key"


def test_a_wildcard_certificate_over_routes_to_different_backends(tmp_path: Path) -> None:
    text = routes(
        ('"a.example.com"', 9001, f'  listen_transport = "tls;{wildcard_files(tmp_path)}"\n'),
        ('"b.example.com"', 9002, '  listen_transport = "tls;servername=b.example.com"\n'),
    )
    found = warnings(tmp_path, text)
    assert ("h2-coalescing", "endpoints[0].routes[0]") in found
    # the same backend behind both: no hazard
    same = text.replace("9002", "9001")
    assert ("h2-coalescing", "endpoints[0].routes[0]") not in warnings(tmp_path, same)


def test_a_passthrough_route_for_names_the_endpoint_terminates(tmp_path: Path) -> None:
    text = routes(
        ('"emby.example.com"', 9001, ""),
        ('"*.example.com"', 9002, f'  listen_transport = "tls;{wildcard_files(tmp_path)}"\n'),
    )
    found = warnings(tmp_path, text)
    assert ("passthrough-overlaps-terminate", "endpoints[0].routes[0]") in found


def test_self_signed_and_expiring_listener_certificates(tmp_path: Path) -> None:
    found = warnings(tmp_path, EP + 'listen_transport = "tls;servername=relay.example.com"\n')
    assert found == [("self-signed-listener", "endpoints[0].listen_transport")]
    ca = trustme.CA()
    leaf = ca.issue_cert("relay.example.com", not_after=NOW + datetime.timedelta(days=3))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "r.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "r.key"))
    text = EP + f'listen_transport = "tls;cert={tmp_path}/r.crt;key={tmp_path}/r.key"\n'
    assert warnings(tmp_path, text) == [("certificate-expiry", "endpoints[0].listen_transport")]


def test_send_proxy_is_reviewed(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(EP + "network.send_proxy = true\n")
    config, rts = explain.load(str(path))
    notes = review(config, rts, NOW)
    assert [(n.code, n.place) for n in notes] == [("send-proxy", "endpoints[0].network.send_proxy")]
    assert "proxy_protocol" in notes[0].fix


def test_send_proxy_warns_through_the_command(tmp_path: Path) -> None:
    assert warnings(tmp_path, EP + "network.send_proxy = true\n") == [
        ("send-proxy", "endpoints[0].network.send_proxy")
    ]


def test_an_invalid_config_exits_2_with_the_relays_message(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, EP + "bogus = 1\n")
    assert code == 2 and out == ""
    assert "bogus" in err and err.count("\n") == 1
    code, _, err = run(tmp_path, EP + 'listen_transport = "tls;cert=/nonexistent.pem;key=k"\n')
    assert code == 2 and "/nonexistent.pem" in err


def test_which_sni_the_backend_gets(tmp_path: Path) -> None:
    text = routes(
        ('"relay.example.com"', 9001, '  listen_transport = "tls;servername=relay.example.com"\n'
         '  remote_transport = "tls;sni=emby.example.com"\n'),
        ('"*.example.org"', 9002, ""),
    )  # fmt: skip
    code, out, _ = run(tmp_path, text, "--json")
    names = {n["name"]: n for n in json.loads(out)["endpoints"][0]["names"]}
    assert names["relay.example.com"]["backend_sni"] == "emby.example.com"
    assert names["relay.example.com"]["route"] == "endpoints[0].routes[0]"
    assert names["*.example.org"]["backend_sni"] == "*.example.org"  # whatever matched
    assert names[None]["route"] == "default" and names[None]["backend_sni"] is None
    other = names[explain.UNMATCHED]  # a name no route matches: the default, passed through
    assert other["route"] == "default" and other["backend_sni"] == explain.UNMATCHED
    modes = [r["mode"] for r in json.loads(out)["endpoints"][0]["routes"]]
    assert modes == ["terminate+reoriginate", "passthrough", "passthrough"]


def test_an_endpoint_without_routes_is_tried_by_ip_and_by_any_name(tmp_path: Path) -> None:
    text = EP + 'listen_transport = "tls;servername=relay.example.com"\nremote_transport = "tls"\n'
    code, out, _ = run(tmp_path, text)
    assert code == 1  # self-signed listener, IP remote without sni=
    assert "try: curl -sv https://127.0.0.1:8443/ -o /dev/null" in out
    assert "unmatched.invalid" not in out
    assert "any name: default; the backend gets SNI that name (no sni=: the client's SNI)" in out
    assert "sends no SNI): default; the backend gets SNI none" in out


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir()))
def test_every_example_is_explained(tmp_path: Path, example: str) -> None:
    """Each example, with the certificate files it names made here (run from its dir)."""
    shutil.copy(EXAMPLES / example, tmp_path / example)
    ca = trustme.CA()
    leaf = ca.issue_cert("relay.example.com")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "emby-ca.pem"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = explain.main(["-c", example])
    finally:
        os.chdir(cwd)
    assert code in (0, 1)


def test_the_text_report_of_one_setup_is_golden(tmp_path: Path) -> None:
    text = (
        '[[endpoints]]\nlisten = "0.0.0.0:443"\nremote = "10.0.0.9:443"\n'
        '  [[endpoints.routes]]\n  server_names = ["emby.example.com"]\n'
        '  remote = "10.0.0.2:8920"\n'
        '  [[endpoints.routes]]\n  server_names = ["relay.example.com"]\n'
        '  listen_transport = "tls;servername=relay.example.com"\n'
        '  remote = "10.0.0.3:443"\n  remote_transport = "tls"\n'
        '  [[endpoints.routes]]\n  when = "no_sni"\n'
        '  listen_transport = "tls;servername=relay.example.com"\n'
        '  remote = "10.0.0.2:8920"\n  remote_transport = "tls;sni=emby.example.com"\n'
    )
    code, out, _ = run(tmp_path, text)
    assert code == 1
    golden = GOLDEN / "explain.txt"
    if os.environ.get("SNIRELAY_GOLDEN_UPDATE"):
        golden.write_text(out)
    assert out == golden.read_text()


def test_a_listener_key_on_a_route_is_said_to_do_nothing(tmp_path: Path) -> None:
    text = routes(('"a.example.com"', 9001, "  network = { accept_proxy = true }\n"))
    assert ("route-network-ignored", "endpoints[0].routes[0].network.accept_proxy") in (
        warnings(tmp_path, text)
    )


def test_the_loaders_warnings_are_explains_too(tmp_path: Path) -> None:
    text = EP + 'extra_remotes = ["127.0.0.1:9444"]\n[network]\nzero_copy = true\n'
    assert warnings(tmp_path, text) == [
        ("config", "network.zero_copy"),
        ("config", "endpoints[0].extra_remotes"),
    ]


def test_every_config_error_is_one_line_each(tmp_path: Path) -> None:
    text = EP.replace("9443", "x") + EP.replace("8443", "8444").replace("9443", "y")
    code, _, err = run(tmp_path, text)
    assert code == 2
    assert [line.split(":")[1] for line in err.splitlines()] == [
        " endpoints[0].remote",
        " endpoints[1].remote",
    ], err
