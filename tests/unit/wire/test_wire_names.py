"""wire.names: the one normaliser, host-name grammar and IP-literal check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snirelay.wire.errors import ProtocolError
from snirelay.wire.names import (
    certificate_covers,
    check_host_name,
    host_name,
    ip_version,
    is_host_name,
    is_ip,
    normalize_name,
)


@pytest.mark.parametrize(
    "name,norm",
    [
        ("Emby.Example.COM.", "emby.example.com"),
        ("  a.example \t", "a.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a..b", "a..b"),  # not validated
        ("*.Example.com", "*.example.com"),
        ("a.example..", "a.example."),  # one trailing dot only
        ("", ""),
    ],
)
def test_normalize_name(name: str, norm: str) -> None:
    assert normalize_name(name) == norm


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "a.",
        "localhost",
        "Emby.Example.COM",
        "a-b.example.com",
        "x_y.example",
        "_srv._tcp.example.com",
        "xn--bcher-kva.example",
        "1a.example",
        "a.1b",
        "a" * 63 + ".com",
        ".".join(["a" * 62] * 4)[:253],
    ],
)
def test_host_names(name: str) -> None:
    assert is_host_name(name)
    assert host_name(name) == normalize_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "a..b",
        ".a.example",
        "a.example..",
        "-a.example",
        "a-.example",
        "a" * 64 + ".com",
        ".".join(["a" * 62] * 5),  # over 253
        "ü.example",
        "\u212a.example",  # KELVIN SIGN lowercases to ASCII "k": still not a host name
        "a b.example",
        "a.example\n",
        "*.example.com",
        "1.2.3",  # a numeric last label: a mistyped address, not a name
        "10.0.0.300",
        "a.123",
        "1.2.3.4",  # an IP literal is not a host name
    ],
)
def test_not_host_names(name: str) -> None:
    assert not is_host_name(name)
    assert host_name(name) is None


@pytest.mark.parametrize(
    "text,version",
    [
        ("127.0.0.1", 4),
        ("0.0.0.0", 4),
        ("::1", 6),
        ("2001:DB8::1", 6),
        ("::ffff:192.0.2.1", 6),
        ("fe80::1%eth0", 6),
        ("01.2.3.4", None),  # leading zeros are refused
        ("1.2.3", None),
        ("256.1.1.1", None),
        ("[::1]", None),  # brackets belong to the address syntax, not the literal
        ("127.0.0.1:80", None),
        ("a.example", None),
        ("", None),
        ("١.٢.٣.٤", None),  # other scripts' digits
        (" 127.0.0.1", None),
    ],
)
def test_ip_version(text: str, version: int | None) -> None:
    assert ip_version(text) == version
    assert is_ip(text) is (version is not None)


@pytest.mark.parametrize(
    "raw,norm,is_ip_",
    [
        (b"Emby.Example.COM.", "emby.example.com", False),
        (b"192.0.2.10", "192.0.2.10", True),
        (b"192.0.2.10.", "192.0.2.10", True),
        (b"2001:DB8::10", "2001:db8::10", True),
        (b"[::1]", "::1", True),
        (b"_srv.example.com", "_srv.example.com", False),
    ],
)
def test_check_host_name(raw: bytes, norm: str, is_ip_: bool) -> None:
    assert check_host_name(raw, "SNI") == (raw.decode(), norm, is_ip_)


@pytest.mark.parametrize(
    "raw",
    [b"", b" a.example", b"a.example ", b"a\x00b", "bü.example".encode(), b"[a.example]", b"1.2.3"],
)
def test_check_host_name_refuses(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        check_host_name(raw, "Host")
    assert e.value.kind == "malformed" and "Host" in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_total_and_consistent(text: str) -> None:
    """Never raises on any text; a host name is never an IP; host_name agrees with both."""
    norm = normalize_name(text)
    assert isinstance(norm, str)
    ok = is_host_name(text)
    assert not (ok and is_ip(text))
    assert host_name(text) == (norm if ok else None)
    if ok:
        assert is_host_name(norm) and normalize_name(norm) == norm


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=70))
def test_check_host_name_outcomes(raw: bytes) -> None:
    try:
        sent, norm, ip = check_host_name(raw, "SNI")
    except ProtocolError as e:
        assert e.kind == "malformed"
        return
    assert sent.encode() == raw
    assert ip == is_ip(norm) and (ip or is_host_name(norm))


@pytest.mark.parametrize(
    ("sans", "host", "covered"),
    [
        ([("DNS", "emby.example.com")], "emby.example.com", True),
        ([("DNS", "EMBY.example.com.")], "emby.example.COM", True),
        ([("DNS", "jellyfin.example.com")], "emby.example.com", False),
        ([("DNS", "*.example.com")], "a.example.com", True),
        ([("DNS", "*.example.com")], "example.com", False),
        ([("DNS", "*.example.com")], "a.b.example.com", False),
        ([("DNS", "a*.example.com")], "ab.example.com", False),
        ([("DNS", "*.com")], "example.com", False),
        ([("IP Address", "127.0.0.1")], "127.0.0.1", True),
        ([("IP Address", "0:0:0:0:0:0:0:1\n")], "::1", True),
        ([("DNS", "127.0.0.1")], "127.0.0.1", False),  # an IP matches IP entries only
        ([("IP Address", "127.0.0.1")], "localhost", False),
        ([], "emby.example.com", False),
    ],
)
def test_certificate_covers(sans: list[tuple[str, str]], host: str, covered: bool) -> None:
    assert certificate_covers(sans, host) is covered
