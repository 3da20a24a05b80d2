"""What a server process serves: a list of services, each with start, stop and drain.

A service is one thing a relay process serves: one TCP listener per endpoint
(`snirelay.net.listener.Listener`) and the admin API (`snirelay.api.AdminApi`); the UDP
relay of a later issue is one more entry in the same list, and the server drives every entry through
the same life (`snirelay.server.Server`):

1. `start()`, once the event loop runs: begin serving, and log the address actually
   bound ("listening on 127.0.0.1:41234 (endpoints[0], tcp)"), so a configured port 0
   can be found;
2. `stop()`, on the first SIGTERM/SIGINT (or when a worker's supervisor goes away):
   take no new work (a listener closes its socket, so new connections are refused);
   work already running goes on;
3. `await drain(deadline)`: return once the work the service still runs has ended, or
   at `deadline` (event-loop time, shared by every service) cut what is left with a
   reset (and return how many it cut), so a peer can tell a cut transfer from a complete one (close reason
   `drain-timeout`). The server cancels the drains on a second SIGTERM/SIGINT; a
   cancelled drain cuts what is left at once, also with a reset (close reason
   `shutdown`), and lets the cancellation propagate.

Each method is called once, in that order. `address`, `place` and `kind` name the
service in log lines and in the worker's "ready" message to its supervisor
(`snirelay.control`).
"""

from __future__ import annotations

from typing import Protocol

# close reasons of the connections a drain cuts
DRAIN_TIMEOUT = "drain-timeout"
SHUTDOWN = "shutdown"


class Service(Protocol):
    address: str  # what was actually bound: "127.0.0.1:41234", "[::1]:443"
    place: str  # where it is configured: "endpoints[0]"
    kind: str  # "tcp", "api" (later: "udp")

    def start(self) -> None: ...

    def stop(self) -> None: ...

    async def drain(self, deadline: float) -> int: ...  # how many it cut
