"""A worker's end of its supervisor's control channel (`workers > 1`).

How it works
------------
`SupervisorLink(loop, sock, ...)` wraps the worker's socket of the socketpair the
supervisor made (frames: `snirelay.control`):

- `ready(services)` tells the supervisor the worker serves (its pid and the addresses
  it listens on), then reads the channel on the loop;
- fan-outs for the admin API, which the worker in slot 0 serves for the whole relay:
  `gathered()` asks every worker (this one too) for its figures and merges them;
  `reload_all()` asks every worker to reload and answers once all have, or at the
  deadline, with each one's result. Each question is a "fanout" frame; the supervisor
  passes it on as "ask" frames, routes the "answer" frames back, and ends with
  "answers-done" naming the workers that did not answer;
- an "ask" from the supervisor is answered with `snapshot()` or `reload()`, the
  callables the server gives;
- the channel closing (the supervisor is gone) calls `on_gone()`: the worker stops.

Error handling: a frame that cannot be sent is a warning (the supervisor may be gone:
the closing channel then stops the worker); a fan-out past its timeout answers with
what came, its missing workers marked (-1: some did not answer in time).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from snirelay import control
from snirelay.observe.log import LOG

FANOUT_TIMEOUT = 5.0  # seconds every worker gets to send its figures to the API
RELOAD_TIMEOUT = 30.0  # and to reload, for POST /reload


class SupervisorLink:
    """The control channel of one worker (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        snapshot: Callable[[], dict[str, Any] | None],
        reload: Callable[[], Awaitable[dict[str, Any]]],
        on_gone: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self._snapshot = snapshot
        self._reload = reload
        self._on_gone = on_gone
        self._framer = control.Framer("supervisor")
        self._send_lock = asyncio.Lock()  # frames to the supervisor, one at a time
        self._fanouts: dict[int, tuple[asyncio.Future[None], dict[int, Any], list[int]]] = {}
        self._next_fanout = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def ready(self, services: list[Any]) -> None:
        """Tell the supervisor this worker serves `services`, then read the channel."""
        self.sock.setblocking(False)
        msg = {
            "type": "ready",
            "pid": os.getpid(),
            "services": [
                {"address": s.address, "place": s.place, "kind": s.kind} for s in services
            ],
        }
        try:
            self.sock.send(control.encode(msg))  # one small frame into an empty buffer
        except OSError as exc:
            LOG.warning("control: cannot tell the supervisor ready: %s", exc)
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    # ---- the admin API's questions to every worker -----------------------------------
    async def gathered(self) -> dict[str, Any]:
        from snirelay.observe.stats import merge_snapshots

        answers, _missing = await self._fan_out("snapshot", FANOUT_TIMEOUT)
        return merge_snapshots(sorted(answers.items()))

    async def reload_all(self) -> dict[str, Any]:
        """POST /reload with workers: every worker reloads; the answer once all have
        (or at the deadline), with each worker's result and the ones that did not say."""
        answers, missing = await self._fan_out("reload", RELOAD_TIMEOUT)
        results = {str(pid): r for pid, r in sorted(answers.items())}
        ok = bool(results) and not missing and all(r.get("ok") for r in results.values())
        out: dict[str, Any] = {"ok": ok, "workers": results, "missing": missing}
        errors = sorted({r["error"] for r in results.values() if r.get("error")})
        if errors:
            out["error"] = "; ".join(errors)
        return out

    async def _fan_out(self, ask: str, timeout: float) -> tuple[dict[int, Any], list[int]]:
        """Ask every worker (this one too) through the supervisor; (pid -> answer, pids
        that did not answer: died, or past `timeout`)."""
        self._next_fanout += 1
        fid = self._next_fanout
        done: asyncio.Future[None] = self.loop.create_future()
        answers: dict[int, Any] = {}
        missing: list[int] = []
        self._fanouts[fid] = (done, answers, missing)
        try:
            await self._send({"type": "fanout", "id": fid, "ask": ask})
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                missing.append(-1)  # some worker did not answer in time
                LOG.warning("api: not every worker answered %r within %gs", ask, timeout)
        finally:
            del self._fanouts[fid]
        return answers, missing

    # ---- the channel -----------------------------------------------------------------
    async def _send(self, msg: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.loop.sock_sendall(self.sock, control.encode(msg))

    async def _answer(self, fid: int, ask: str) -> None:
        """The supervisor passed on a fan-out: answer it."""
        data: Any = self._snapshot() if ask == "snapshot" else await self._reload()
        try:
            await self._send({"type": "answer", "id": fid, "data": data})
        except OSError as exc:
            LOG.warning("control: cannot answer the supervisor: %s", exc)

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ask" and isinstance(msg.get("id"), int):
            task = self.loop.create_task(self._answer(msg["id"], str(msg.get("ask"))))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        entry = self._fanouts.get(msg.get("id"))  # type: ignore[arg-type]
        if entry is None:
            LOG.debug("control: ignoring %r from the supervisor", kind)
            return
        done, answers, missing = entry
        if kind == "answer" and isinstance(msg.get("pid"), int):
            answers[msg["pid"]] = msg.get("data")
        elif kind == "answers-done":
            missing.extend(p for p in msg.get("missing") or () if isinstance(p, int))
            if not done.done():
                done.set_result(None)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            for msg in self._framer.feed(data):
                self._on_message(msg)
            return
        self.loop.remove_reader(self.sock.fileno())
        self._on_gone()
