"""The doctor zoo (tests/integration/doctor_zoo.py) does what it says: each server, probed
with the real `openssl s_client` and Python's ssl module (with VERIFY_X509_STRICT),
presents exactly its TLS problem and nothing else, so `snirelay check` tests can rely on it.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from integration.doctor_zoo import DoctorZoo, start_doctor_zoo
from integration.servers import nginx_available

pytestmark = pytest.mark.integration

TIMEOUT = 15.0  # per client run; a healthy probe takes milliseconds


def s_client(port: int, *args: str) -> tuple[int, str]:
    """`openssl s_client -connect 127.0.0.1:PORT ARGS </dev/null`: (exit code, stdout+stderr)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def verify(zoo: DoctorZoo, key: str, servername: str | None, *extra: str) -> tuple[int, str]:
    sni = ["-servername", servername] if servername else ["-noservername"]
    return s_client(zoo.ports[key], *sni, "-CAfile", str(zoo.ca), "-verify_return_error", *extra)


def verify_code(out: str) -> int:
    found = re.search(r"^Verify return code: (\d+) ", out, re.MULTILINE)
    assert found, out
    return int(found.group(1))


def chain_cns(out: str) -> list[str]:
    """The subject CNs of the certificates the server sent, depth 0 first."""
    return re.findall(r"^\s*\d+ s:.*CN = ([^,\n]+)", out, re.MULTILINE)


def strict_context(cafile: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_get(port: int, ctx: ssl.SSLContext, servername: str | None) -> tuple[bytes, bytes]:
    """GET / over TLS to 127.0.0.1:PORT, Host = the SNI (nginx picks the server block by
    Host, the certificate by SNI): (served leaf DER, whole response)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=servername) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        host = (servername or "zoo").encode()
        tls.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return der, b"".join(chunks)


def der_of(pem: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(serialization.Encoding.DER)


def no_sni_context(cafile: Path) -> ssl.SSLContext:
    ctx = strict_context(cafile)
    ctx.check_hostname = False  # needed to connect with server_hostname=None
    return ctx


# -- servers that verify -------------------------------------------------------------------

GOOD = [
    ("named", "app.example.com"),
    ("full_chain", "chain.example.com"),
    ("reject_no_sni", "strict.example.com"),
    ("other_name", "other.example.com"),
]


@pytest.mark.parametrize(("key", "name"), GOOD)
def test_good_servers_verify_with_openssl(doctor_zoo: DoctorZoo, key: str, name: str) -> None:
    code, out = verify(doctor_zoo, key, name, "-verify_hostname", name, "-x509_strict")
    assert code == 0, out
    assert verify_code(out) == 0, out
    assert "Verify return code: 0 (ok)" in out
    assert chain_cns(out)[0] == name, out


@pytest.mark.parametrize(("key", "name"), GOOD)
def test_good_servers_verify_with_python_strict(doctor_zoo: DoctorZoo, key: str, name: str) -> None:
    der, response = https_get(doctor_zoo.ports[key], strict_context(doctor_zoo.ca), name)
    assert der == der_of(doctor_zoo.leaves[key])
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert response.endswith(f"{key} sni={name}\n".encode()), response


def test_the_zoo_root_is_the_only_anchor(doctor_zoo: DoctorZoo) -> None:
    """With the system trust store instead of the zoo root, even full_chain fails."""
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        https_get(doctor_zoo.ports["full_chain"], strict_context(None), "chain.example.com")
    assert info.value.verify_code == 20, info.value  # unable to get local issuer


# -- servers that do not verify ------------------------------------------------------------

BAD = [
    ("expired", "expired.example.com", 10, "certificate has expired"),
    ("not_yet_valid", "future.example.com", 9, "certificate is not yet valid"),
    ("self_signed", "selfsigned.example.com", 18, "self-signed certificate"),
    ("no_intermediate", "chain.example.com", 20, "unable to get local issuer certificate"),
]


@pytest.mark.parametrize(("key", "name", "code", "reason"), BAD)
def test_bad_servers_fail_verification_with_openssl(
    doctor_zoo: DoctorZoo, key: str, name: str, code: int, reason: str
) -> None:
    exit_code, out = verify(doctor_zoo, key, name, "-verify_hostname", name)
    assert exit_code != 0, out
    assert f"Verify return code: {code} ({reason})" in out, out
    assert chain_cns(out) == [name], out  # the leaf only, for the asked-for name


@pytest.mark.parametrize(("key", "name", "code", "reason"), BAD)
def test_bad_servers_fail_verification_with_python(
    doctor_zoo: DoctorZoo, key: str, name: str, code: int, reason: str
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        https_get(doctor_zoo.ports[key], strict_context(doctor_zoo.ca), name)
    assert info.value.verify_code == code, info.value
    assert reason in str(info.value.verify_message), info.value


def test_bad_servers_are_otherwise_fine(doctor_zoo: DoctorZoo) -> None:
    """Each bad server has only its one problem: accept it and the handshake works."""
    for key, name, _, _ in BAD:
        ctx = ssl.create_default_context(cafile=str(doctor_zoo.ca))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        der, response = https_get(doctor_zoo.ports[key], ctx, name)
        assert der == der_of(doctor_zoo.leaves[key]), key
        assert response.endswith(f"{key} sni={name}\n".encode()), response


def test_other_name_is_a_hostname_mismatch_for_any_sni(doctor_zoo: DoctorZoo) -> None:
    code, out = verify(
        doctor_zoo, "other_name", "app.example.com", "-verify_hostname", "app.example.com"
    )
    assert code != 0, out
    assert "Verify return code: 62 (hostname mismatch)" in out, out
    assert chain_cns(out) == ["other.example.com"], out
    for sni in ("app.example.com", None):
        code, out = verify(doctor_zoo, "other_name", sni)
        assert (code, verify_code(out), chain_cns(out)) == (0, 0, ["other.example.com"]), out
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        https_get(doctor_zoo.ports["other_name"], strict_context(doctor_zoo.ca), "app.example.com")
    assert info.value.verify_code == 62, info.value


def test_self_signed_is_its_own_issuer(doctor_zoo: DoctorZoo) -> None:
    cert = x509.load_pem_x509_certificate(doctor_zoo.leaves["self_signed"].read_bytes())
    cert.verify_directly_issued_by(cert)
    root = x509.load_pem_x509_certificate(doctor_zoo.ca.read_bytes())
    assert cert.issuer != root.subject
    # trusting the certificate itself makes it verify (nothing else is wrong with it)
    code, out = s_client(
        doctor_zoo.ports["self_signed"],
        "-servername",
        "selfsigned.example.com",
        "-CAfile",
        str(doctor_zoo.leaves["self_signed"]),
        "-verify_return_error",
    )
    assert (code, verify_code(out)) == (0, 0), out


# -- SNI behaviour -------------------------------------------------------------------------


@pytest.mark.parametrize("sni", [None, "unknown.example.com"])
def test_named_without_the_name_gets_the_default_certificate(
    doctor_zoo: DoctorZoo, sni: str | None
) -> None:
    code, out = verify(doctor_zoo, "named", sni)
    assert (code, verify_code(out)) == (0, 0), out
    assert chain_cns(out) == ["default.example.com"], out
    der, response = https_get(doctor_zoo.ports["named"], no_sni_context(doctor_zoo.ca), sni)
    assert der == der_of(doctor_zoo.named_default)
    assert der != der_of(doctor_zoo.leaves["named"])
    assert response.endswith(f"named_default sni={sni or ''}\n".encode()), response


@pytest.mark.parametrize("sni", [None, "nosuch.example.com"])
def test_reject_no_sni_alerts_without_the_name(doctor_zoo: DoctorZoo, sni: str | None) -> None:
    code, out = verify(doctor_zoo, "reject_no_sni", sni)
    assert code != 0, out
    assert "unrecognized name" in out and "alert number 112" in out, out
    assert chain_cns(out) == [], out  # no certificate at all
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        https_get(doctor_zoo.ports["reject_no_sni"], no_sni_context(doctor_zoo.ca), sni)


# -- chains --------------------------------------------------------------------------------


def test_full_chain_serves_the_intermediate_and_no_intermediate_does_not(
    doctor_zoo: DoctorZoo,
) -> None:
    _, full = verify(doctor_zoo, "full_chain", "chain.example.com")
    intermediate_cn = "snirelay doctor zoo intermediate CA"
    assert chain_cns(full) == ["chain.example.com", intermediate_cn], full
    _, bare = verify(doctor_zoo, "no_intermediate", "chain.example.com")
    assert chain_cns(bare) == ["chain.example.com"], bare
    # the exposed intermediate is exactly the missing piece
    ctx = strict_context(doctor_zoo.ca)
    ctx.load_verify_locations(cafile=str(doctor_zoo.intermediate))
    der, _ = https_get(doctor_zoo.ports["no_intermediate"], ctx, "chain.example.com")
    assert der == der_of(doctor_zoo.leaves["no_intermediate"])
    assert der != der_of(doctor_zoo.leaves["full_chain"])
    done = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile",
         str(doctor_zoo.ca), "-untrusted", str(doctor_zoo.intermediate),
         str(doctor_zoo.leaves["no_intermediate"])],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.endswith(": OK\n"), done


def test_chain_leaves_name_their_issuer_by_aia(doctor_zoo: DoctorZoo) -> None:
    intermediate = x509.load_pem_x509_certificate(doctor_zoo.intermediate.read_bytes())
    root = x509.load_pem_x509_certificate(doctor_zoo.ca.read_bytes())
    intermediate.verify_directly_issued_by(root)
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = intermediate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    for key in ("no_intermediate", "full_chain"):
        leaf = x509.load_pem_x509_certificate(doctor_zoo.leaves[key].read_bytes())
        leaf.verify_directly_issued_by(intermediate)
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert [(d.access_method, d.access_location.value) for d in aia] == [
            (AuthorityInformationAccessOID.CA_ISSUERS, "http://ca.invalid/intermediate.crt")
        ]


def test_certificate_profiles(doctor_zoo: DoctorZoo) -> None:
    root = x509.load_pem_x509_certificate(doctor_zoo.ca.read_bytes())
    root.verify_directly_issued_by(root)
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    leaves = {**doctor_zoo.leaves, "named_default": doctor_zoo.named_default}
    names = {**doctor_zoo.server_names, "named_default": "default.example.com"}
    assert set(leaves) == set(names)
    for key, path in leaves.items():
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
        ext = leaf.extensions
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [names[key]], key
        assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca, key
        ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH], key


# -- not TLS -------------------------------------------------------------------------------


def test_plain_http_answers_in_the_clear(doctor_zoo: DoctorZoo) -> None:
    with socket.create_connection(("127.0.0.1", doctor_zoo.ports["plain_http"]), TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: zoo\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert response.endswith(b"\r\n\r\nplain\n"), response
    code, out = verify(doctor_zoo, "plain_http", "app.example.com")
    assert code != 0 and chain_cns(out) == [], out


def test_silent_accepts_and_never_answers(doctor_zoo: DoctorZoo) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = no_sni_context(doctor_zoo.ca).wrap_bio(incoming, outgoing, server_hostname="a.example")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    client_hello = outgoing.read()
    assert client_hello[:1] == b"\x16"  # a TLS handshake record
    with socket.create_connection(("127.0.0.1", doctor_zoo.ports["silent"]), TIMEOUT) as s:
        s.sendall(client_hello)
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(1)  # no ServerHello, no alert, no EOF, no reset: nothing


def test_closed_refuses(doctor_zoo: DoctorZoo) -> None:
    port = doctor_zoo.ports["closed"]
    assert port not in {p for k, p in doctor_zoo.ports.items() if k != "closed"}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    code, out = s_client(port, "-servername", "app.example.com")
    assert code != 0 and "Connection refused" in out, out


# -- lifecycle -----------------------------------------------------------------------------


def test_stop_closes_every_port(tmp_path: Path) -> None:
    reason = nginx_available()
    if reason:
        pytest.skip(reason)
    zoo = start_doctor_zoo(tmp_path)
    try:
        listening = {k: p for k, p in zoo.ports.items() if k != "closed"}
        for port in listening.values():
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    finally:
        zoo.stop()
    assert zoo.nginx.proc is not None and zoo.nginx.proc.poll() is not None
    still_open = []
    for key, port in listening.items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        except ConnectionRefusedError:
            continue
        still_open.append(key)
    assert still_open == []
