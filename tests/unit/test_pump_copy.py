"""The buffered fallback pump (CopyDir), forced on: the path systems without splice take.

In process, on real loopback sockets: 8 MiB each way, byte-exact, with the client
half-closing first, through a Server whose context has splice turned off.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

from helpers.wait import wait_until
from snirelay.config.model import Addr, Config, Endpoint, Upstream
from snirelay.net.loop import new_loop
from snirelay.net.pump import CopyDir
from snirelay.server import Server

SIZE = 8 << 20


def test_copy_path_moves_every_byte_both_ways_with_half_close() -> None:
    data_up, data_down = os.urandom(SIZE), os.urandom(SIZE)
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(10)
    seen: list[str] = []

    def serve_backend() -> None:
        c, _ = backend.accept()
        with c:
            c.settimeout(20)
            h = hashlib.sha256()
            while chunk := c.recv(1 << 20):
                h.update(chunk)
            seen.append(h.hexdigest())
            c.sendall(data_down)  # after the client's EOF: the other direction still flows
            c.shutdown(socket.SHUT_WR)

    up = Upstream(remotes=(Addr("127.0.0.1", backend.getsockname()[1]),))
    config = Config(
        endpoints=(Endpoint(place="endpoints[0]", listen=Addr("127.0.0.1", 0), upstream=up),)
    )
    loop = new_loop()
    server = Server(config, loop)
    server.ctx.splice = False
    server.bind()
    port = server.listeners[0].sock.getsockname()[1]
    paths: list[str] = []
    real_readable = CopyDir.on_readable

    def spy(self: CopyDir) -> None:
        paths.append(f"{type(self).__name__}:{self.sfd}")
        real_readable(self)

    CopyDir.on_readable = spy  # type: ignore[method-assign]
    relay = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    relay.start()
    threading.Thread(target=serve_backend, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(data_up)
            s.shutdown(socket.SHUT_WR)
            h = hashlib.sha256()
            n = 0
            while chunk := s.recv(1 << 20):
                h.update(chunk)
                n += len(chunk)
    finally:
        CopyDir.on_readable = real_readable  # type: ignore[method-assign]
        stopping = wait_until(lambda: server.stopping, 10)
        loop.call_soon_threadsafe(stopping.set)
        relay.join(10)
        loop.close()
        backend.close()
    assert seen == [hashlib.sha256(data_up).hexdigest()]
    assert n == SIZE and h.hexdigest() == hashlib.sha256(data_down).hexdigest()
    assert len(set(paths)) == 2, paths  # both directions moved bytes through CopyDir
