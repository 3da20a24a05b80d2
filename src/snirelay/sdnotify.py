"""systemd's readiness protocol (`Type=notify`): a datagram to `$NOTIFY_SOCKET`.

`notify("READY=1")` once the relay serves, `RELOADING=1` ... `READY=1` around a reload,
`STOPPING=1` when a stop begins. Without `$NOTIFY_SOCKET` (not started by systemd)
it does nothing. A failure to send is logged once and never stops the relay. Small
enough to write here (the protocol is one sendto); no library needed.
"""

from __future__ import annotations

import os
import socket
import time

from snirelay.observe.log import LOG

_warned = False


def notify(state: str) -> None:
    global _warned
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if state == "RELOADING=1":  # systemd 253 wants the time with it
        state += f"\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), path)
    except OSError as exc:
        if not _warned:
            _warned = True
            LOG.warning("systemd notify (%s): %s", os.environ.get("NOTIFY_SOCKET"), exc)
