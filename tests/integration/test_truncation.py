"""Truncation never looks like success: a backend that resets mid-body reaches curl as
an error, not as a clean end of a close-delimited response (issue 7, "Hostile input").

The backend answers an HTTP/1.0-style response with no Content-Length (the body ends
when the connection does), sends part of the body, then resets. Through the relay,
curl must fail (exit 56, "Recv failure: Connection reset by peer"); before the fix the
relay turned the backend's reset into a FIN and curl exited 0 with half a body.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from helpers.peers import TcpServer, read_http_head
from helpers.relay import RelayProcess, free_port

pytestmark = pytest.mark.integration

BODY_PART = b"x" * 200_000


class ResettingHttp(TcpServer):
    def handle(self, sock: socket.socket) -> None:
        if read_http_head(sock) is None:
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY_PART)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_backend_reset_mid_body_fails_curl(tmp_path: Path) -> None:
    with ResettingHttp() as backend:
        port = free_port()
        relay = RelayProcess(["-l", f"127.0.0.1:{port}", "-r", backend.addr], tmp_path=tmp_path)
        with relay:
            relay.start()
            out = tmp_path / "body"
            proc = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "-o", str(out), f"http://127.0.0.1:{port}/"],
                capture_output=True,
                timeout=20,
            )
            assert proc.returncode == 56, (proc.returncode, proc.stderr)
            assert b"reset" in proc.stderr.lower()
            (rec,) = relay.wait_records(1)
            assert rec["close"] == "reset" and rec["phase"] == "pump"
