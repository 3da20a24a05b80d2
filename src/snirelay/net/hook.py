"""realm's pre-connect hook: a C-ABI library that picks or refuses each connection's remote.

`pre_conn_hook = "PATH"` (top level) or `-j/--pre-conn-hook PATH` names a shared
library with realm's two functions (realm_hook/realm.h)::

    uint32_t realm_first_pkt_len(void);
    int32_t  realm_decide_remote_idx(int32_t max_remote_idx, const char *pkt);

How it works
------------
`load(path)` opens the library with ctypes once, at start, before any worker is forked
(`snirelay.startup.check_hook`): the workers inherit the loaded library and the `Hook`
object. Both symbols get their C types (`argtypes`/`restype`), so a call converts
exactly as the header says.

`realm_first_pkt_len()` is called **once, at load**, not per connection as realm does:
the function takes nothing and can answer nothing but a constant the library was
written with; calling it once lets the relay check the answer at start (above
`MAX_FIRST_PKT_LEN`, 64 KiB, the relay refuses to start: one line) instead of failing
every connection, and spares a foreign call per connection. A library whose answer
changes over time gets its first answer for the life of the process.

Per connection (net.phases.PreConnHook, after routing, for the chosen upstream) the
relay holds the client's first `first_len` bytes (read within the endpoint's
`network.sniff_timeout`, never consumed: they all go on to the backend) and calls
`decide(max_idx, pkt)` with `max_idx = len(extra_remotes)` and a buffer of exactly
`first_len` bytes (an empty one, at once, when `first_len` is 0). The answer: below 0
refuses the connection; 0 is `remote`; k in 1..max_idx is `extra_remotes[k-1]`, and
only that remote is tried (no balancing, no failover to another: the hook chose).

The hook runs on the event loop's thread, synchronously, as realm runs it inside its
connection's task: a hook that blocks stalls every connection of its process, one that
crashes ends the process. It is the operator's code, trusted as realm trusts it.

A reload does not load another library: the one loaded at start serves until a
restart (a changed `pre_conn_hook` is a warning at reload; see snirelay.server).

Error handling
--------------
`load` raises ConfigError, one line naming the key (`pre_conn_hook (-j/--pre-conn-hook)`)
and the file: no such file, not a file, not a shared library this process can load
("cannot load it as a shared library", with dlopen's reason), a function missing, a
first-packet length above the cap.
A name without "/" is looked up the way dlopen (and so realm) does: the system's
library path, not the working directory; the error says so when a file of that name
is in the working directory.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from snirelay.config.model import ConfigError
from snirelay.observe.log import one_line

__all__ = ["KEY", "MAX_FIRST_PKT_LEN", "Hook", "load"]

KEY = "pre_conn_hook (-j/--pre-conn-hook)"  # how errors name the setting
MAX_FIRST_PKT_LEN = 64 * 1024  # bytes the relay holds per connection for the hook, at most
FIRST_LEN = "realm_first_pkt_len"
DECIDE = "realm_decide_remote_idx"


class Hook:
    """A loaded hook library: `first_len` (its `realm_first_pkt_len()`, read at load)
    and `decide(max_idx, pkt)`, its `realm_decide_remote_idx`."""

    __slots__ = ("path", "first_len", "decide", "lib")

    def __init__(self, path: str, lib: Any, first_len: int, decide: Any) -> None:
        self.path = path
        self.lib = lib  # kept: the library stays loaded while the functions are in use
        self.first_len = first_len
        # decide(max_idx: int, pkt: bytes) -> int: the C function itself (ctypes converts)
        self.decide = decide


def load(path: str) -> Hook:
    """Open the library at `path` and check what the relay needs of it (see the module
    docstring). Raises ConfigError naming the key and the file."""
    target = path
    if "/" in path:
        if not os.path.exists(path):
            raise _error(path, "no such file")
        if not os.path.isfile(path):
            raise _error(path, "not a file")
        target = os.path.abspath(path)  # dlopen would read a relative path from here anyway
    try:
        lib = ctypes.CDLL(target)
    except OSError as exc:
        why = str(exc).removeprefix(f"{target}: ")
        if "/" not in path and os.path.isfile(path):
            why += (
                " (a name without '/' is looked up in the system's library path, as dlopen"
                f" does; write ./{path} for the file in the working directory)"
            )
        raise _error(path, f"cannot load it as a shared library: {why}") from None
    funcs = []
    for name in (FIRST_LEN, DECIDE):
        try:
            funcs.append(getattr(lib, name))
        except AttributeError:
            raise _error(
                path,
                f"has no function {name} (a hook defines both {FIRST_LEN} and {DECIDE},"
                ' with C linkage: extern "C" in C++)',
            ) from None
    first, decide = funcs
    first.argtypes = []
    first.restype = ctypes.c_uint32
    decide.argtypes = [ctypes.c_int32, ctypes.c_char_p]
    decide.restype = ctypes.c_int32
    n = int(first())
    if n > MAX_FIRST_PKT_LEN:
        raise _error(
            path,
            f"{FIRST_LEN}() is {n}, above the {MAX_FIRST_PKT_LEN} bytes the relay holds per"
            " connection for the hook",
        )
    return Hook(path, lib, n, decide)


def _error(path: str, why: str) -> ConfigError:
    return ConfigError(KEY, one_line(f"{path}: {why}"))
