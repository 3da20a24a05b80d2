"""Build small realm pre-connect hook libraries for tests, with the system C compiler.

How it works: `build_hook(tmp_path, ...)` writes C source into `tmp_path` and runs
``gcc -shared -fPIC`` on it; the library it returns follows realm_hook/realm.h. The
default source, `ROUTER`, reads `FIRST_LEN` bytes (4 unless told) and answers by the
first one:

====  =========================================  ==================================
byte  answer                                     meaning to the relay
====  =========================================  ==================================
A     0                                          `remote`
B     1                                          extra_remotes[0]
C     2                                          extra_remotes[1]
M     max_remote_idx                             the last remote (max is passed on)
0x16  1                                          extra_remotes[0] (a TLS handshake)
X     -1                                         refused
Z     99                                         out of range: refused, logged
====  =========================================  ==================================

Anything else (and a NULL buffer, which the relay must never pass) is -1. With
``FIRST_LEN = 0`` the buffer is not read: the answer is `max_remote_idx`.

Error handling: a compiler error raises `subprocess.CalledProcessError` with its
output, so a broken test source says why; gcc is a test dependency (CI installs it
with scripts/install-system-deps.sh).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROUTER = r"""
#include <stddef.h>
#include <stdint.h>

#ifndef FIRST_LEN
#define FIRST_LEN 4
#endif

uint32_t realm_first_pkt_len(void) { return FIRST_LEN; }

int32_t realm_decide_remote_idx(int32_t max_remote_idx, const char *pkt) {
    if (pkt == NULL) return -1;
    if (FIRST_LEN == 0) return max_remote_idx;
    switch (pkt[0]) {
    case 'A': return 0;
    case 'B': return 1;
    case 'C': return 2;
    case 'M': return max_remote_idx;
    case 0x16: return 1;
    case 'X': return -1;
    case 'Z': return 99;
    default: return -1;
    }
}
"""

ONLY_FIRST_LEN = r"""
#include <stdint.h>
uint32_t realm_first_pkt_len(void) { return 4; }
"""


def build_hook(
    tmp_path: Path, source: str = ROUTER, *, name: str = "hook.so", first_len: int | None = None
) -> Path:
    """Compile `source` into ``tmp_path/name`` (with ``-DFIRST_LEN=first_len`` when
    given) and return the library's path."""
    src = tmp_path / (Path(name).stem + ".c")
    src.write_text(source)
    out = tmp_path / name
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out), str(src)]
    if first_len is not None:
        cmd.insert(1, f"-DFIRST_LEN={first_len}u")
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    return out
