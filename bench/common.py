"""Shared plumbing for the benchmark: ports, processes, and /proc accounting.

How it works: every relay and backend is a child process started here and stopped
here by its PID (never by name). Resource figures come from /proc: CPU is
utime and stime (kept apart, and summed) of the relay's process tree (the root's
cutime/cstime count children that already exited, e.g. socat's forks), memory is the sum of VmRSS and of PSS
(from smaps_rollup) over the live tree. Every wait in this module has a deadline.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A measurement could not be made (tool failed, relay did not come up, ...)."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f}s")


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (children inherit it): to ``want`` if allowed, else the hard limit.

    5,000 idle connections cost a relay 10,000 descriptors at least (more if it keeps
    pipes per connection), so the usual 1,024 or even 20,000 may not be enough.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # needs root
            soft, hard = want, want
    except (ValueError, OSError):
        pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def which(tool: str) -> str | None:
    for path in (shutil.which(tool), f"/usr/sbin/{tool}", f"/sbin/{tool}"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def run_text(
    argv: Sequence[str], timeout: float = 10.0, env: Mapping[str, str] | None = None
) -> str:
    """Run a short command, return stdout+stderr as text ('' when it cannot run)."""
    try:
        out = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout + out.stderr).decode(errors="replace")


def start(
    argv: Sequence[str], log_path: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session, output to a log file (``env``: its whole environment)."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a child we started, by PID: SIGTERM to its process group, then SIGKILL."""
    if proc.poll() is not None:
        return
    # start_new_session=True made the child the leader of its own group; the group
    # holds only what it forked (socat's per-connection children, nginx's worker).
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # let the group's stragglers (forked children) go too
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tree_pids(proc.pid, include_root=False):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return data[data.rindex(")") + 2 :].split()


def tree_pids(root: int, include_root: bool = True) -> list[int]:
    """The root and all its live descendants (walks /proc once)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    if not include_root:
        out.remove(root)
    return out


def tree_cpu_seconds(root: int) -> tuple[float, float]:
    """(user, system) seconds of the live tree, plus cutime/cstime (reaped children)."""
    user = system = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # after the ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def tree_fds(root: int) -> int:
    """Open file descriptors over the live tree."""
    n = 0
    for pid in tree_pids(root):
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return n


@dataclass(frozen=True, slots=True)
class Memory:
    rss_kb: int
    pss_kb: int
    processes: int


def tree_memory(root: int) -> Memory:
    rss = pss = n = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except OSError:
            continue
    return Memory(rss, pss, n)


class CpuMeter:
    """CPU seconds used by a process tree between start() and stop().

    stop() returns user+system; ``user`` and ``system`` keep the two parts of the last
    measurement (the kernel's part is most of a relay's work per connection, so the two
    move differently when the relay's own code changes).
    """

    def __init__(self, root: int | None) -> None:
        self.root = root
        self._t0 = (0.0, 0.0)
        self.user = 0.0
        self.system = 0.0
        self.system_share: float | None = None  # kernel part of the last measurement

    def start(self) -> None:
        if self.root is not None:
            self._t0 = tree_cpu_seconds(self.root)

    def stop(self) -> float | None:
        if self.root is None:
            return None
        user, system = tree_cpu_seconds(self.root)
        self.user, self.system = user - self._t0[0], system - self._t0[1]
        used = self.user + self.system
        self.system_share = self.system / used if used > 0 else None
        return used

    def per_unit(self, prefix: str, units: float) -> dict[str, float]:
        """``{prefix: total, prefix_user: .., prefix_sys: ..}`` in µs per unit of work."""
        if self.root is None or units <= 0:
            return {}
        out = {
            prefix: (self.user + self.system) / units * 1e6,
            f"{prefix}_user": self.user / units * 1e6,
            f"{prefix}_sys": self.system / units * 1e6,
        }
        if self.system_share is not None:
            out["cpu_kernel_share"] = self.system_share
        return out
