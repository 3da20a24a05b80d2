"""The backend name check after a verified handshake (net.tls.check_name), whose
result is kept per certificate and name: decoding the certificate is read once."""

from __future__ import annotations

from typing import Any

import pytest

from snirelay.net import tls
from snirelay.net.tls import MAX_COVERS, NameMismatch, check_name


class Obj:
    """What check_name reads of a finished SSL object: the DER, and (counted) the
    decoded certificate."""

    def __init__(self, der: bytes, sans: tuple[tuple[str, str], ...]) -> None:
        self.der = der
        self.sans = sans
        self.decoded = 0

    def getpeercert(self, binary_form: bool = False) -> Any:
        if binary_form:
            return self.der
        self.decoded += 1
        return {"subjectAltName": self.sans}


class Side:
    def __init__(self, obj: Obj) -> None:
        self.obj = obj


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    tls._COVERS.clear()


def test_each_certificate_and_name_is_decoded_once() -> None:
    obj = Obj(b"cert-1", (("DNS", "*.example.com"),))
    for _ in range(5):
        check_name(Side(obj), "a.example.com")  # type: ignore[arg-type]
    assert obj.decoded == 1
    for _ in range(3):
        with pytest.raises(NameMismatch, match=r"'example.org'.*names: \*\.example\.com"):
            check_name(Side(obj), "example.org")  # type: ignore[arg-type]
    assert obj.decoded == 2  # one decode per (certificate, name)


def test_another_certificate_is_checked_on_its_own() -> None:
    check_name(Side(Obj(b"cert-1", (("DNS", "a.example.com"),))), "a.example.com")  # type: ignore[arg-type]
    other = Obj(b"cert-2", (("DNS", "b.example.com"),))
    with pytest.raises(NameMismatch):
        check_name(Side(other), "a.example.com")  # type: ignore[arg-type]
    assert other.decoded == 1


def test_the_cache_is_bounded() -> None:
    for i in range(MAX_COVERS * 2 + 1):
        check_name(Side(Obj(b"cert-%d" % i, (("DNS", "a.example.com"),))), "a.example.com")  # type: ignore[arg-type]
    assert 0 < len(tls._COVERS) <= MAX_COVERS
