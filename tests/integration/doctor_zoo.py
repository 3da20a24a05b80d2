"""The doctor zoo: real TLS servers on loopback, each with one known TLS problem.

For tests of `snirelay check` (a TLS probe). `start_doctor_zoo(dir)` makes a root CA, an
intermediate CA and the leaf certificates with `cryptography` (EC P-256) at test time,
then starts one nginx (`servers.Nginx`) with a server per problem, each on its own
127.0.0.1 port, plus two non-nginx ports. The keys of `DoctorZoo.ports`:

- `named`: SNI app.example.com gets the app.example.com certificate; no SNI (or an
  unknown name) gets the `default_server` certificate for default.example.com.
- `expired`: expired.example.com, expired 30 days ago.
- `not_yet_valid`: future.example.com, valid from 10 days from now.
- `self_signed`: selfsigned.example.com, signed by its own key (not by the root).
- `no_intermediate`: chain.example.com issued by the intermediate, served without it
  (the leaf's AIA caIssuers points to http://ca.invalid/intermediate.crt).
- `full_chain`: chain.example.com issued by the intermediate, served with it.
- `other_name`: other.example.com only, served whatever the SNI.
- `reject_no_sni`: `ssl_reject_handshake on` by default; only strict.example.com works.
- `plain_http`: plain HTTP, `200 plain`.
- `silent`: a Python listener that accepts and never sends a byte (handshake timeouts).
- `closed`: a free port nothing listens on (connection refused).

Every certificate except the self-signed one chains to `DoctorZoo.ca`, the only trust
anchor. Each nginx server answers `<key> sni=$ssl_server_name`. `stop()` stops nginx and
the silent listener.
"""

from __future__ import annotations

import datetime
import selectors
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from integration.servers import Nginx, pick_port

AIA_URL = "http://ca.invalid/intermediate.crt"

# port key -> the DNS name its certificate is for (the SNI that "should" work there)
SERVER_NAMES = {
    "named": "app.example.com",
    "expired": "expired.example.com",
    "not_yet_valid": "future.example.com",
    "self_signed": "selfsigned.example.com",
    "no_intermediate": "chain.example.com",
    "full_chain": "chain.example.com",
    "other_name": "other.example.com",
    "reject_no_sni": "strict.example.com",
}
NAMED_DEFAULT = "default.example.com"  # the default_server certificate on `named`


# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "snirelay doctor zoo"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(common_name: str, now: datetime.datetime, parent: _Issuer | None = None) -> _Issuer:
    """A root (no parent) or an intermediate (pathlen 0) issued by `parent`."""
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(parent.cert.subject if parent else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650 if parent is None else 1825))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if parent is None else 0),
            critical=True,
        )
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
            critical=False,
        )
    signer = parent.key if parent else key
    return _Issuer(builder.sign(signer, hashes.SHA256()), key)


def _make_leaf(
    dns_name: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    issuer: _Issuer | None,
    aia: bool = False,
) -> _Issuer:
    """A server certificate for `dns_name`, issued by `issuer` (None: self-signed)."""
    key = _key()
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_name))
        .issuer_name(issuer.cert.subject if issuer else _name(dns_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    if issuer is not None:
        # keyUsage without keyCertSign would stop OpenSSL from seeing a self-signed
        # certificate as self-signed (it would report "unable to get local issuer").
        builder = builder.add_extension(_usage(ca=False), critical=True)
    if aia:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(AIA_URL),
                    )
                ]
            ),
            critical=False,
        )
    return _Issuer(builder.sign(signer, hashes.SHA256()), key)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# -- the silent listener -------------------------------------------------------------------


class SilentServer:
    """Accepts on 127.0.0.1 and never sends: reads and drops whatever arrives, closes a
    connection when its peer does. One thread; `stop()` closes every socket and joins."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="doctor-zoo-silent", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    return
                if sock is self._listener:
                    try:
                        conn, _ = self._listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(sock)
                    sock.close()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        self._selector.close()
        self._wake_w.close()


# -- the zoo -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoctorZoo:
    """What `doctor_zoo` yields (see the module doc for what each port serves)."""

    nginx: Nginx
    ca: Path  # root CA PEM: the only trust anchor
    ports: dict[str, int]  # port key -> 127.0.0.1 port
    intermediate: Path  # intermediate CA PEM (issuer of the no_intermediate/full_chain leaves)
    leaves: dict[str, Path]  # port key -> leaf PEM it serves ("named" is app.example.com)
    named_default: Path  # leaf PEM of the default_server on `named` (default.example.com)
    server_names: dict[str, str]  # TLS port key -> the DNS name its certificate is for
    silent_server: SilentServer

    def stop(self) -> None:
        self.nginx.stop()
        self.silent_server.stop()


def _tls_server(
    port: int,
    key_name: str,
    server_name: str,
    cert: Path | None,
    key: Path | None,
    default: bool = False,
) -> str:
    listen = f"127.0.0.1:{port} ssl" + (" default_server" if default else "")
    if cert is None:
        creds = "        ssl_reject_handshake on;\n"
    else:
        creds = f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
    return (
        "    server {\n"
        f"        listen {listen};\n"
        f"        server_name {server_name};\n"
        f"{creds}"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        f'        location / {{ return 200 "{key_name} sni=$ssl_server_name\\n"; }}\n'
        "    }\n"
    )


def start_doctor_zoo(directory: Path) -> DoctorZoo:
    """Certificates under `directory/certs`, nginx under `directory/nginx`, all started."""
    certs = directory / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    root = _make_ca("snirelay doctor zoo root CA", now)
    intermediate = _make_ca("snirelay doctor zoo intermediate CA", now, root)
    ca_path = certs / "root-ca.pem"
    ca_path.write_bytes(_pem(root.cert))
    intermediate_path = certs / "intermediate-ca.pem"
    intermediate_path.write_bytes(_pem(intermediate.cert))

    good = (now - day, now + 365 * day)
    made = {
        "named": _make_leaf(SERVER_NAMES["named"], *good, root),
        "named_default": _make_leaf(NAMED_DEFAULT, *good, root),
        "expired": _make_leaf(SERVER_NAMES["expired"], now - 400 * day, now - 30 * day, root),
        "not_yet_valid": _make_leaf(
            SERVER_NAMES["not_yet_valid"], now + 10 * day, now + 400 * day, root
        ),
        "self_signed": _make_leaf(SERVER_NAMES["self_signed"], *good, None),
        "no_intermediate": _make_leaf(SERVER_NAMES["no_intermediate"], *good, intermediate, True),
        "full_chain": _make_leaf(SERVER_NAMES["full_chain"], *good, intermediate, True),
        "other_name": _make_leaf(SERVER_NAMES["other_name"], *good, root),
        "reject_no_sni": _make_leaf(SERVER_NAMES["reject_no_sni"], *good, root),
    }
    cert_files: dict[str, Path] = {}  # what nginx serves (full_chain: leaf + intermediate)
    leaf_files: dict[str, Path] = {}  # the leaf alone
    key_files: dict[str, Path] = {}
    for key_name, leaf in made.items():
        leaf_files[key_name] = certs / f"{key_name}.leaf.pem"
        leaf_files[key_name].write_bytes(_pem(leaf.cert))
        key_files[key_name] = certs / f"{key_name}.key"
        _write_key(key_files[key_name], leaf.key)
        served = _pem(leaf.cert)
        if key_name == "full_chain":
            served += _pem(intermediate.cert)
        cert_files[key_name] = certs / f"{key_name}.crt"
        cert_files[key_name].write_bytes(served)

    def tls(port: int, key_name: str, server_name: str, default: bool = False) -> str:
        return _tls_server(
            port, key_name, server_name, cert_files[key_name], key_files[key_name], default
        )

    nginx_keys = (*SERVER_NAMES, "plain_http")
    ports = {key_name: pick_port() for key_name in nginx_keys}
    blocks = [
        tls(ports["named"], "named_default", NAMED_DEFAULT, default=True),
        tls(ports["named"], "named", SERVER_NAMES["named"]),
        *(
            tls(ports[k], k, SERVER_NAMES[k])
            for k in ("expired", "not_yet_valid", "self_signed", "no_intermediate", "full_chain")
        ),
        tls(ports["other_name"], "other_name", "_", default=True),
        _tls_server(ports["reject_no_sni"], "reject_no_sni", "_", None, None, default=True),
        tls(ports["reject_no_sni"], "reject_no_sni", SERVER_NAMES["reject_no_sni"]),
        "    server {\n"
        f"        listen 127.0.0.1:{ports['plain_http']};\n"
        '        location / { return 200 "plain\\n"; }\n'
        "    }\n",
    ]
    nginx = Nginx(directory / "nginx", "".join(blocks), ports.values())
    silent = SilentServer()
    try:
        nginx.start()
    except BaseException:
        silent.stop()
        raise
    ports["silent"] = silent.port
    ports["closed"] = pick_port()
    return DoctorZoo(
        nginx=nginx,
        ca=ca_path,
        ports=ports,
        intermediate=intermediate_path,
        leaves={k: leaf_files[k] for k in SERVER_NAMES},
        named_default=leaf_files["named_default"],
        server_names=dict(SERVER_NAMES),
        silent_server=silent,
    )
