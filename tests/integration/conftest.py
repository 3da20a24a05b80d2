"""Fixtures with real servers: certificates, nginx TLS/HTTP backends, HAProxy.

- `tls_backends` (session): one nginx on loopback, started once for the whole run, with an
  https server per name in `servers.BACKEND_NAMES` (each on its own port, answering
  `name=<name> sni=$ssl_server_name`), a default https server (`default sni=...`,
  certificate for default.example.com) and plaintext servers `http name=<name> host=$host`.
  Certificates come from a CA made at test time (`tls_backends.ca` is its PEM).
- `doctor_zoo` (session): nginx servers with one TLS problem each (integration/doctor_zoo.py).
- `haproxy`: a factory `haproxy(body, ports) -> HAProxy`, started, stopped at test end.

A missing nginx/haproxy binary skips with the reason; CI installs both (`make system-deps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from integration.doctor_zoo import DoctorZoo, start_doctor_zoo
from integration.servers import (
    HAProxy,
    TlsBackends,
    haproxy_available,
    nginx_available,
    start_tls_backends,
)


@pytest.fixture(scope="session")
def tls_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBackends]:
    reason = nginx_available()
    if reason:
        pytest.skip(reason)
    backends = start_tls_backends(tmp_path_factory.mktemp("tls-backends"))
    try:
        yield backends
    finally:
        backends.nginx.stop()


@pytest.fixture(scope="session")
def doctor_zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoctorZoo]:
    reason = nginx_available()
    if reason:
        pytest.skip(reason)
    zoo = start_doctor_zoo(tmp_path_factory.mktemp("doctor-zoo"))
    try:
        yield zoo
    finally:
        zoo.stop()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[str, Iterable[int]], HAProxy]]:
    reason = haproxy_available()
    if reason:
        pytest.skip(reason)
    started: list[HAProxy] = []

    def start(body: str, ports: Iterable[int]) -> HAProxy:
        proxy = HAProxy(tmp_path / f"haproxy{len(started)}", body, ports)
        started.append(proxy)
        proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
