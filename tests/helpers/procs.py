"""Processes seen from the outside, for the worker and supervisor tests.

Read from /proc (no psutil): the children of a pid (the ppid field of
/proc/PID/stat), whether a pid is alive (a zombie is not), and live processes whose
command line holds a marker. (Waiting on a condition: helpers.wait.)
"""

from __future__ import annotations

from pathlib import Path


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) pids whose parent is `pid`, sorted."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (unique to one test)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and alive(int(entry.name)):
            out.append(int(entry.name))
    return out
