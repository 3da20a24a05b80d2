"""realm's transport-string grammar: ``tls;sni=example.com;insecure``, ``ws;host=h;path=/p``.

How it works
------------
The string is split on ``;``; each token is trimmed (empty tokens are skipped) and is
either a flag (``ws``, ``tls``, ``insecure``, ``0rtt``) or ``name=value``. Order is
free; an option given twice is an error. After the tokens are read the combination is
checked against the side it is used on:

- listen side only: ``cert``, ``key``, ``servername``, ``ocsp``;
- remote side only: ``sni``, ``insecure``, ``0rtt``, ``ca``, ``client_cert``, ``client_key``;
- both: ``ws``, ``host``, ``path``, ``tls``, ``alpn`` (snirelay: on the listen side,
  the ALPN protocols the TLS server accepts);
- TLS options need ``tls``; ``host``/``path`` need ``ws`` and ``ws`` needs both (the
  request's ``Host`` and target; a path starts with ``/``); ``cert`` needs ``key`` (and
  the reverse), ``client_cert`` needs ``client_key``; a TLS listener needs ``cert``+``key``
  or ``servername``; ``insecure`` and ``ca`` contradict each other.

snirelay additions: ``ca=PATH``, ``client_cert=``/``client_key=`` and ``sni=$sni`` (send
the client's own SNI upstream).

Error handling: `ConfigError` naming the place, e.g.
"endpoints[0].remote_transport: unknown option 'sn' (did you mean 'sni'?)".
"""

from __future__ import annotations

import difflib

from snirelay.config.model import ConfigError, Transport
from snirelay.wire.names import host_name, is_ip

FLAGS = {"ws": "ws", "tls": "tls", "insecure": "insecure", "0rtt": "zero_rtt"}
VALUES = (
    "sni",
    "alpn",
    "host",
    "path",
    "cert",
    "key",
    "servername",
    "ocsp",
    "ca",
    "client_cert",
    "client_key",
)
LISTEN_ONLY = ("cert", "key", "servername", "ocsp")
REMOTE_ONLY = ("sni", "insecure", "0rtt", "ca", "client_cert", "client_key")
NEEDS_TLS = ("sni", "alpn", "insecure", "0rtt", *LISTEN_ONLY, "ca", "client_cert", "client_key")
NEEDS_WS = ("host", "path")


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_transport(raw: str, place: str, side: str) -> Transport:
    """Parse one transport string for `side` ("listen" or "remote")."""
    if side not in ("listen", "remote"):
        raise ValueError(f"side must be 'listen' or 'remote', not {side!r}")
    seen: dict[str, str | None] = {}
    for token in (t.strip() for t in raw.split(";")):
        if not token:
            continue
        name, eq, value = token.partition("=")
        name = name.strip()
        if name not in FLAGS and name not in VALUES:
            raise ConfigError(
                place, f"unknown option {name!r}{_hint(name, [*FLAGS, *VALUES])} in {raw!r}"
            )
        if name in seen:
            raise ConfigError(place, f"option {name!r} given twice in {raw!r}")
        if name in FLAGS:
            if eq:
                raise ConfigError(place, f"{name!r} is a flag and takes no value in {raw!r}")
            seen[name] = None
        else:
            value = value.strip()
            if not eq or not value:
                raise ConfigError(place, f"option {name!r} needs a value ({name}=...) in {raw!r}")
            seen[name] = value
    _check(seen, raw, place, side)
    alpn = seen.get("alpn")
    sni = seen.get("sni")
    return Transport(
        raw=raw,
        ws="ws" in seen,
        tls="tls" in seen,
        insecure="insecure" in seen,
        zero_rtt="0rtt" in seen,
        sni=sni if sni in (None, "$sni") or is_ip(sni or "") else host_name(sni or ""),
        alpn=tuple(p.strip() for p in alpn.split(",")) if alpn else (),
        host=seen.get("host"),
        path=seen.get("path"),
        cert=seen.get("cert"),
        key=seen.get("key"),
        servername=seen.get("servername"),
        ocsp=seen.get("ocsp"),
        ca=seen.get("ca"),
        client_cert=seen.get("client_cert"),
        client_key=seen.get("client_key"),
    )


def _check(seen: dict[str, str | None], raw: str, place: str, side: str) -> None:
    other = "remote" if side == "listen" else "listen"
    wrong = LISTEN_ONLY if side == "remote" else REMOTE_ONLY
    for name in seen:
        if name in wrong:
            raise ConfigError(
                place, f"{name!r} is a {other}-side option (use it in {other}_transport): {raw!r}"
            )
        if name in NEEDS_TLS and "tls" not in seen:
            raise ConfigError(place, f"{name!r} needs 'tls' in {raw!r}")
        if name in NEEDS_WS and "ws" not in seen:
            raise ConfigError(place, f"{name!r} needs 'ws' in {raw!r}")
    for a, b in (("cert", "key"), ("key", "cert"), ("client_cert", "client_key")):
        if a in seen and b not in seen:
            raise ConfigError(place, f"{a!r} needs {b!r} too: {raw!r}")
    if "client_key" in seen and "client_cert" not in seen:
        raise ConfigError(place, f"'client_key' needs 'client_cert' too: {raw!r}")
    if "ws" in seen:
        for name in NEEDS_WS:
            if name not in seen:
                raise ConfigError(place, f"'ws' needs {name}=... too: {raw!r}")
        if not (seen["path"] or "").startswith("/"):
            raise ConfigError(place, f"path= must start with '/': {raw!r}")
    if "insecure" in seen and "ca" in seen:
        raise ConfigError(place, f"'insecure' and 'ca' contradict each other: {raw!r}")
    if side == "listen" and "tls" in seen:
        if "cert" not in seen and "servername" not in seen:
            raise ConfigError(
                place, f"a TLS listener needs cert=...;key=... or servername=...: {raw!r}"
            )
        if "cert" in seen and "servername" in seen:
            raise ConfigError(place, f"give either cert/key or servername, not both: {raw!r}")
    if "servername" in seen and host_name(seen["servername"] or "") is None:
        raise ConfigError(place, f"servername {seen['servername']!r} is not a valid host name")
    sni = seen.get("sni")
    if sni is not None and sni != "$sni":
        if is_ip(sni):
            pass  # TLS sends no IP as SNI: none is sent, the certificate checked for the IP
        elif host_name(sni) is None:
            raise ConfigError(place, f"sni={sni!r} is not a valid host name (or $sni)")
    alpn = seen.get("alpn")
    if alpn is not None and not all(p.strip() for p in alpn.split(",")):
        raise ConfigError(place, f"empty protocol in alpn={alpn!r}")
