"""The admin API (`[api] listen = "127.0.0.1:9090"`, optional `token`): a service of the
server (snirelay.services), HTTP/1.1 on the relay's own event loop.

Routes:

- `GET /healthz`: `200 ok` while serving, `503 stopping` once a stop began;
- `GET /metrics`: the Prometheus text format (observe.stats, made by prometheus_client);
- `GET /connections`: the live connections, JSON;
- `GET /handshakes[?limit=N]`: the most recent TLS clients seen, newest first, JSON
  (N: 1,000 by default, 10,000 at most);
- `GET /status.json`: what the status page shows, JSON; `GET /`: the status page;
- `POST /reload`: re-read the config (as SIGHUP does): `200` with what changed, or
  `400` with the new config's error (the running config stays).

The figures come from `source` (observe.stats snapshots: this process's, or with
`workers > 1` every worker's, gathered over the control channels and merged; the worker
in slot 0 serves the API then).

How it works: `asyncio.start_server` on the relay's loop; each connection carries one
request (every answer says `Connection: close`), parsed by h11, with bounds, so that no
client of the API can disturb relaying: the request head at most `MAX_HEAD` bytes and
a body at most `MAX_BODY` (else 413 for either), the whole request within
`REQUEST_TIMEOUT` seconds (else 408), malformed HTTP 400, at most `MAX_CLIENTS`
connections at once (more are closed at accept). With a token, a request without
`Authorization: Bearer TOKEN` (compared in constant time) gets 401 and a log line.
Without a token the API binds loopback addresses only: `check_listen` refuses any
other at start (exit 2).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from snirelay.config.model import ApiConfig, Config
from snirelay.observe.log import LOG, esc

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
LINGER = 2.0  # seconds a closing API connection waits for the client's own end
MAX_CLIENTS = 32
DEFAULT_HANDSHAKES = 1000  # /handshakes without ?limit=
MAX_HANDSHAKES = 10_000  # ?limit= at most
Snap = dict[str, Any]
Query = dict[str, list[str]]

Reload = Callable[[], Awaitable[dict[str, Any]]]
Source = Callable[[], Awaitable[dict[str, Any]]]  # a snapshot (observe.stats.Stats.snapshot)


def check_listen(api: ApiConfig) -> str | None:
    """Why `api` must not start as configured (one line), or None."""
    if api.token is not None and not api.token:
        return "api.token: empty (leave it out for a loopback-only API, or set a secret)"
    if api.token:
        return None
    host = api.listen.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"api.listen: {api.listen} is not a loopback address and api.token is not set:"
        " anyone who can reach it could read the relay's traffic and reload it; set"
        " api.token, or listen on 127.0.0.1"
    )


class _Refused(Exception):
    """Answer with this status and message, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminApi:
    """The service (see the module docstring)."""

    kind = "http"

    def __init__(
        self,
        config: Config,
        source: Source,
        reload: Reload,
        stopping: Callable[[], bool],
        status_page: Callable[[dict[str, Any]], str],
    ) -> None:
        """`source`: the figures to show (this process's, or every worker's merged);
        `reload`: what POST /reload does; `stopping`: is a stop under way."""
        assert config.api is not None
        self.cfg = config.api
        self.source = source
        self.reload = reload
        self.stopping = stopping
        self.status_page = status_page
        self.place = "api"
        self.address = str(self.cfg.listen)
        self.server: asyncio.Server | None = None
        self.clients: set[asyncio.Task[None]] = set()
        self.token = self.cfg.token.encode() if self.cfg.token else None

    async def open(self) -> None:
        """Bind (before the other services start; OSError on failure)."""
        # SO_REUSEPORT: the API answers while the relay drains, so a relay started next
        # to a draining one (a restart) can bind the same port
        self.server = await asyncio.start_server(
            self._client, self.cfg.listen.host, self.cfg.listen.port, limit=MAX_HEAD,
            reuse_port=True,
        )  # fmt: skip
        sock = self.server.sockets[0]
        from snirelay.net.listener import bound_address

        self.address = bound_address(sock)

    def start(self) -> None:
        LOG.info("listening on %s (%s, %s)", self.address, self.place, self.kind)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, deadline: float) -> int:
        """Requests in flight end within their own deadline; cut what is left then."""
        loop = asyncio.get_running_loop()
        try:
            while self.clients and loop.time() < deadline:
                await asyncio.wait(set(self.clients), timeout=max(0.0, deadline - loop.time()))
        finally:
            left = list(self.clients)
            for task in left:
                task.cancel()
        return len(left)

    # ---- one client ------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.clients) >= MAX_CLIENTS:
            LOG.warning("api: %d clients already: closing a new one", MAX_CLIENTS)
            writer.transport.abort()
            return
        self.clients.add(task)
        peer = writer.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    request, body = await self._read(conn, reader)
                status, ctype, payload, extra = await self._answer(request, body, who)
                if request.method == b"HEAD":
                    extra = [*extra, ("content-length", str(len(payload)))]
                    payload = b""  # the head only, with the length GET would have
            except TimeoutError:
                status, ctype, payload, extra = 408, *_text("request timeout"), []
                LOG.warning("api: %s: no whole request within %gs", who, REQUEST_TIMEOUT)
            except _Refused as r:
                status, ctype, payload, extra = r.status, *_text(str(r)), []
                if r.status != 401:
                    LOG.warning("api: %s: %d %s", who, r.status, esc(str(r)))
            await self._send(writer, conn, status, ctype, payload, extra)
            await _linger(reader, writer)
        except (ConnectionError, TimeoutError, h11.LocalProtocolError):
            pass  # the client went away, or stopped reading: nothing more to say
        except Exception:  # a bug in a handler: log it, keep serving
            LOG.exception("api: %s: request failed", who)
        finally:
            self.clients.discard(task)
            writer.transport.abort()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        got = 0  # bytes received
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                code = exc.error_status_hint
                raise _Refused(413 if code == 431 else 400, f"bad request: {exc}") from None
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data and request is None:
                    raise ConnectionResetError("the client closed before a request")
                got += len(data)
                if request is None and got > MAX_HEAD + MAX_BODY:
                    raise _Refused(413, f"request head over {MAX_HEAD} bytes")
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                head = sum(len(k) + len(v) + 4 for k, v in event.headers) + len(event.target)
                if head > MAX_HEAD:
                    raise _Refused(413, f"request head over {MAX_HEAD} bytes")
                length = _content_length(event)
                if length is not None and length > MAX_BODY:
                    raise _Refused(413, f"request body over {MAX_BODY} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _Refused(413, f"request body over {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the client closed mid-request")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        status: int,
        ctype: str,
        payload: bytes,
        extra: list[tuple[str, str]],
    ) -> None:
        length = [] if any(k == "content-length" for k, _ in extra) else [str(len(payload))]
        headers = [
            ("content-type", ctype),
            *(("content-length", n) for n in length),
            ("connection", "close"),
            ("cache-control", "no-store"),
            *extra,
        ]
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            data = conn.send(_response(status, headers))
        except h11.LocalProtocolError:  # h11 refuses to answer a request it could not parse
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
            conn.next_event()
            data = conn.send(_response(status, headers))
        if payload:
            data = (data or b"") + (conn.send(h11.Data(data=payload)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    # ---- routes ----------------------------------------------------------------------
    async def _answer(
        self, request: h11.Request, body: bytes, who: str
    ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        if self.token is not None and not self._authorized(request):
            LOG.warning("api: %s: %s %s without the right token: 401", who,
                        request.method.decode(), esc(request.target.decode("latin-1")))  # fmt: skip
            return (
                401,
                *_text("unauthorized: send Authorization: Bearer TOKEN"),
                [("www-authenticate", 'Bearer realm="snirelay"')],
            )
        method = request.method.decode()
        url = urlsplit(request.target.decode("latin-1"))
        path = url.path
        gets = {
            "/healthz": self._healthz,
            "/metrics": self._metrics,
            "/connections": self._connections,
            "/handshakes": self._handshakes,
            "/status.json": self._status_json,
            "/": self._status_html,
        }
        if path == "/reload":
            if method != "POST":
                return 405, *_text("use POST /reload"), [("allow", "POST")]
            return await self._reload()
        handler = gets.get(path)
        if handler is None:
            return 404, *_text(f"no such page: {path}"), []
        if method not in ("GET", "HEAD"):
            return 405, *_text(f"use GET {path}"), [("allow", "GET, HEAD")]
        snap = {} if path == "/healthz" else await self.source()
        status, ctype, payload = handler(snap, parse_qs(url.query))
        return status, ctype, payload, []

    def _authorized(self, request: h11.Request) -> bool:
        assert self.token is not None
        want = b"bearer " + self.token
        for name, value in request.headers:
            if name == b"authorization":
                # compare_digest takes as long whatever matches; lower-case only the scheme
                got = value[:7].lower() + value[7:]
                return hmac.compare_digest(got, want)
        return False

    def _healthz(self, _snap: Snap, _q: Query) -> tuple[int, str, bytes]:
        if self.stopping():
            return 503, *_text("stopping")
        return 200, *_text("ok")

    def _metrics(self, snap: Snap, _q: Query) -> tuple[int, str, bytes]:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return 200, CONTENT_TYPE_LATEST, snap["metrics"].encode()

    def _connections(self, snap: Snap, _q: Query) -> tuple[int, str, bytes]:
        return 200, *_json(snap["connections"])

    def _handshakes(self, snap: Snap, q: Query) -> tuple[int, str, bytes]:
        limit = DEFAULT_HANDSHAKES
        if "limit" in q:
            try:
                limit = int(q["limit"][0])
            except ValueError:
                raise _Refused(400, "limit: a whole number") from None
            if not 0 <= limit <= MAX_HANDSHAKES:
                raise _Refused(400, f"limit: between 0 and {MAX_HANDSHAKES}")
        return 200, *_json(snap["handshakes"][:limit])

    def status(self, snap: Snap) -> dict[str, Any]:
        return {
            "endpoints": snap["endpoints"],
            "connections": snap["connections"],
            "handshakes": snap["handshakes"][:200],
            "started": snap["started"],
            "stopping": self.stopping(),
        }

    def _status_json(self, snap: Snap, _q: Query) -> tuple[int, str, bytes]:
        return 200, *_json(self.status(snap))

    def _status_html(self, snap: Snap, _q: Query) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", self.status_page(self.status(snap)).encode()

    async def _reload(self) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        result = await self.reload()
        return (200 if result.get("ok") else 400), *_json(result), []


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """End the answer with a FIN, then read and drop what the client still sends (the
    rest of a refused request) until it closes or `LINGER` passes: closing a socket with
    unread bytes sends a reset, which can destroy the answer before the client reads it."""
    writer.write_eof()
    async with asyncio.timeout(LINGER):
        while await reader.read(65536):
            pass


def _response(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return h11.Response(status_code=status, headers=headers, reason=reason)


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _text(message: str) -> tuple[str, bytes]:
    return "text/plain; charset=utf-8", (message + "\n").encode()


def _json(value: Any) -> tuple[str, bytes]:
    return "application/json", (json.dumps(value, indent=1) + "\n").encode()
