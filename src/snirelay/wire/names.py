"""Host names and IP literals: the one normaliser, the one grammar, the one IP check.

Pure: no I/O. The config loader, the route table, the resolver, the socket helpers and
the wire readers (SNI, HTTP Host) all use these, so a name means the same thing
everywhere.

How it works
------------
- `normalize_name(name)` gives the form routes compare: surrounding whitespace
  stripped, lowercased, one trailing dot dropped, and a Unicode (IDN) name turned into
  A-labels with Python's "idna" codec (a name the codec refuses is left as is: it
  never equals a valid name). It never fails and does not validate.
- `is_host_name(name)` is the grammar: dot-separated labels of ASCII letters, digits,
  "-" and "_" ("-" not at a label's ends; "_" tolerated anywhere because real hosts
  use it), each label 1..63 bytes, at most 253 bytes in all, one trailing dot
  allowed, any case, and the last label not all digits (RFC 1123 section 2.1, RFC
  3696 section 2: a top-level label is never numeric, so "1.2.3" or "10.0.0.300" is
  a mistyped address, not a name). Unicode text is not a host name (an IDN name is
  written in A-labels, "xn--...").
- `host_name(name)` is both: the normalised name when it is a host name, else None.
- `ip_version(text)` is 4 or 6 for an IPv4 dotted quad or an IPv6 literal (no brackets,
  no port; an IPv6 "%scope" is accepted; IPv4 with leading zeros is not), else None;
  `is_ip(text)` says whether it is one of the two. Text that has no ":" and is not only
  digits and dots is turned away before `ipaddress` is asked, so the usual case (a
  name) costs no exception.
- `check_host_name(raw, what)` is what the wire readers apply to an SNI or a Host:
  printable ASCII, then an IP literal (bare, or an IPv6 literal in brackets) or a host
  name; it returns (as sent, normalised, is an IP) or raises
  `ProtocolError("malformed")` naming `what`.

Error handling: only `check_host_name` raises (ProtocolError); the others return a
bool, None or a string for any input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from snirelay.wire.errors import ProtocolError

__all__ = [
    "check_host_name",
    "host_name",
    "ip_version",
    "is_host_name",
    "is_ip",
    "normalize_name",
]

# a whole lowercased name without its trailing dot; lengths are checked apart
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_PRINTABLE = re.compile(rb"[\x21-\x7e]+")


def normalize_name(name: str) -> str:
    """Strip, lowercase, drop one trailing dot, turn a Unicode (IDN) name into A-labels."""
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # never equals a valid name; callers that need one check is_host_name
    return name


def _valid(norm: str) -> bool:
    """The grammar on a name already lowercased, its trailing dot dropped."""
    return (
        0 < len(norm) <= 253
        and _NAME_RE.fullmatch(norm) is not None
        and not norm.rpartition(".")[2].isdigit()
    )


def is_host_name(name: str) -> bool:
    """Is `name` a DNS host name (see the module docstring for the grammar)?"""
    if not name.isascii():
        return False
    name = name.lower()
    return _valid(name[:-1] if name.endswith(".") else name)


def host_name(name: str) -> str | None:
    """The normalised form of `name` when it is a host name, else None."""
    return normalize_name(name) if is_host_name(name) else None


def ip_version(text: str) -> int | None:
    """4 or 6 when `text` is an IPv4 or IPv6 literal (no brackets, no port), else None."""
    if ":" not in text and not text.replace(".", "").isdigit():
        return None  # a name: no parse, no exception
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    """True when `text` is an IPv4 or IPv6 literal (no brackets, no port)."""
    return ip_version(text) is not None


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def check_host_name(raw: bytes, what: str) -> tuple[str, str, bool]:
    """Validate a server name from the wire; return (as sent, normalised, is an IP literal).

    Normalised: `normalize_name`, and the brackets around an IPv6 literal removed.
    Raises ProtocolError("malformed") naming `what` ("SNI", "Host") when the bytes are
    neither a host name nor an IP literal.
    """
    if not _PRINTABLE.fullmatch(raw):
        raise _malformed(f"{what} {raw[:80]!r} is not a printable ASCII host name")
    text = raw.decode("ascii")
    norm = normalize_name(text)
    if norm.startswith("[") and norm.endswith("]"):
        if ip_version(norm[1:-1]) is None:
            raise _malformed(f"{what} {text[:80]!r} is not an IP literal")
        return text, norm[1:-1], True
    if ip_version(norm) is not None:
        return text, norm, True
    if not _valid(norm):
        raise _malformed(f"{what} {text[:80]!r} is not a valid host name")
    return text, norm, False


def certificate_covers(sans: Sequence[tuple[str, str]], host: str) -> bool:
    """Does a certificate whose subjectAltName entries are `sans` (("DNS", name) and
    ("IP Address", ip) pairs, as `ssl.SSLObject.getpeercert()` gives them) cover `host`,
    a host name or an IP literal?

    RFC 6125 as OpenSSL applies it for Python's `check_hostname`: names compare without
    case and without a trailing dot; a wildcard stands for exactly one whole left-most
    label (``*.example.com`` covers ``a.example.com``, not ``example.com`` nor
    ``a.b.example.com``; no partial wildcards such as ``a*.example.com``, and none
    directly over a top-level label such as ``*.com``); an IP
    matches only an IP entry, by value (``::1`` equals ``0:0::1``). The subject's
    common name is not consulted (SANs are required, as browsers require them)."""
    version = ip_version(host)
    if version is not None:
        want = ipaddress.ip_address(host)
        for kind, value in sans:
            if kind == "IP Address":
                try:
                    if ipaddress.ip_address(value.strip()) == want:
                        return True
                except ValueError:
                    continue
        return False
    name = normalize_name(host)
    for kind, value in sans:
        if kind != "DNS":
            continue
        pattern = normalize_name(value)
        if pattern == name:
            return True
        if pattern.startswith("*.") and "*" not in pattern[2:] and "." in pattern[2:]:
            head, dot, rest = name.partition(".")
            if dot and head and rest == pattern[2:]:
                return True
    return False
