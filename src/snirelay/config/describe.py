"""What a route does, in words: shared by `snirelay explain` and the admin API's status
page (pure: config in, words out)."""

from __future__ import annotations

from snirelay.config.model import Transport, Upstream


def side_name(t: Transport | None) -> str:
    if t is None:
        return "tcp"
    if t.ws:
        return "wss" if t.tls else "ws"
    return "tls" if t.tls else "tcp"


def mode_of(up: Upstream, routed: bool) -> tuple[str, str]:
    """(key, sentence) for what the relay does on this route."""
    client, backend = side_name(up.listen_transport), side_name(up.remote_transport)
    if "ws" in client or "ws" in backend:
        return "ws", (
            f"WebSocket tunnel: accepts {client}, sends {backend} (realm's transports;"
            " the bytes inside are relayed as they are)"
        )
    if client == "tcp" and backend == "tcp":
        if routed:
            return "passthrough", (
                "passthrough routing: TLS stays end to end, the route is chosen by the SNI"
                " (or the HTTP Host); the client sees the backend's certificate"
            )
        return "forward", "forward: bytes relayed untouched (realm)"
    if client == "tls" and backend == "tls":
        return "terminate+reoriginate", (
            "terminate and re-originate (the SNI rewrite): the relay answers with its own"
            " certificate and opens a new, verified TLS connection to the backend"
        )
    if client == "tls":
        return "terminate", (
            "terminate: the relay answers with its own certificate and sends plain bytes"
            " to the backend"
        )
    return "reoriginate", (
        "originate TLS: plain bytes from the client, a verified TLS connection to the backend"
    )
