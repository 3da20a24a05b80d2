"""The admin API's status page (`GET /`): one HTML page a person reads at a glance.

`render(view)` turns the API's `/status.json` document (endpoints with their routes and
backends, live connections, recent TLS handshakes, `started`, `stopping`) into plain
HTML5 with its CSS inline: no scripts, no external assets, and a
`<meta http-equiv="refresh">` so the browser reloads it every few seconds.

How it works: one small function per part of the page (header, an endpoint's route
table, the connections table, the handshakes table), each returning HTML text that
`render` joins. Every value from the document goes through `_e` (html.escape), since
much of it came from the network (SNI, ALPN, client addresses, error messages). State
is never shown by colour alone: a backend says UP or DOWN, a handshake row whose
upstream SNI differs from the received one says "≠", a failed one says FAILED.
"""

from __future__ import annotations

import html
import time
from typing import Any

REFRESH = 5  # seconds between reloads
MAX_ROWS = 200  # per table; the rest is counted in a "... and N more" line
OK_OUTCOMES = ("ok", "passthrough")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
.summary { color: #444; margin: 0 0 1em; }
.place, .none, .muted { color: #888; }
.stopping { background: #c62828; color: #fff; font-weight: bold; padding: .5em 1em; }
table { border-collapse: collapse; background: #fff; margin-bottom: .5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #e8e8e8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; min-width: 3.5em; text-align: center; font-weight: bold;
  border-radius: 3px; padding: 0 4px; color: #fff; }
.up { background: #2e7d32; }
.down { background: #c62828; }
tr.mismatch td { background: #fff3cd; }
tr.failed td { background: #fde0e0; }
.mark { font-weight: bold; color: #b00020; }
.more { color: #666; font-style: italic; }
"""


def render(view: dict[str, Any]) -> str:
    """The whole status page for one `/status.json` document."""
    endpoints = view.get("endpoints", [])
    body = [_header(view)]
    body += [_endpoint(ep) for ep in endpoints]
    body.append(_connections(view.get("connections", [])))
    body.append(_handshakes(view.get("handshakes", [])))
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>snirelay status</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -- parts of the page -------------------------------------------------------------------


def _header(view: dict[str, Any]) -> str:
    started = float(view.get("started") or time.time())
    live = len(view.get("connections", []))
    endpoints = len(view.get("endpoints", []))
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    summary = (
        f"up {_duration(time.time() - started)} · {live} live connection{_s(live)}"
        f" · {endpoints} endpoint{_s(endpoints)} · {now} UTC (times below are UTC)"
    )
    out = f"<h1>snirelay</h1>\n<p class=summary>{summary}</p>"
    if view.get("stopping"):
        out += (
            "\n<p class=stopping>STOPPING: the relay is shutting down;"
            " no new connections are accepted, open ones are draining.</p>"
        )
    return out


def _endpoint(ep: dict[str, Any]) -> str:
    head = f"<h2>{_e(ep.get('endpoint'))} <span class=place>{_e(ep.get('place'))}</span></h2>"
    rows = [
        "<tr><th>Route</th><th>Names</th><th>Mode</th><th>Live</th><th>Backend</th>"
        "<th>State</th><th>Recent failures</th><th>Last error</th></tr>"
    ]
    for route in ep.get("routes", []):
        rows += _route_rows(route)
    return head + "\n<table>\n" + "\n".join(rows) + "\n</table>"


def _route_rows(route: dict[str, Any]) -> list[str]:
    """One row per backend; the route's own cells span them all."""
    backends = route.get("backends") or [{}]
    span = f" rowspan={len(backends)}" if len(backends) > 1 else ""
    names = _names(route.get("names"), route.get("route"))
    mode = f'<td{span} title="{_e(route.get("description", ""))}">{_e(route.get("mode"))}</td>'
    first = (
        f"<td{span}>{_e(route.get('route'))}</td><td{span}>{names}</td>{mode}"
        f"<td{span} class=num>{_e(route.get('live', 0))}</td>"
    )
    rows = [f"<tr>{first}{_backend_cells(backends[0])}</tr>"]
    rows += [f"<tr>{_backend_cells(b)}</tr>" for b in backends[1:]]
    return rows


def _backend_cells(backend: dict[str, Any]) -> str:
    if not backend:
        return "<td colspan=4 class=none>no backend</td>"
    if backend.get("up"):
        state = "<span class='badge up'>UP</span>"
    else:
        state = "<span class='badge down'>DOWN</span>"
    if not backend.get("tried"):
        state += " <span class=muted>(not tried yet)</span>"
    return (
        f"<td>{_e(backend.get('remote'))}</td><td>{state}</td>"
        f"<td class=num>{_e(backend.get('recent_failures', 0))}</td>"
        f"<td>{_e(backend.get('last_error') or '')}</td>"
    )


def _connections(conns: list[dict[str, Any]]) -> str:
    head = f"<h2>Live connections ({len(conns)})</h2>"
    if not conns:
        return head + "\n<p class=none>no live connections</p>"
    rows = [
        "<tr><th>ID</th><th>Client</th><th>Endpoint</th><th>SNI</th><th>Route</th>"
        "<th>Backend</th><th>Up</th><th>Down</th><th>Age</th><th>Phase</th></tr>"
    ]
    for c in conns[:MAX_ROWS]:
        rows.append(
            f"<tr><td class=num>{_e(c.get('id'))}</td><td>{_e(c.get('client'))}</td>"
            f"<td>{_e(c.get('endpoint'))}</td><td>{_sni(c.get('sni'))}</td>"
            f"<td>{_e(c.get('route'))}</td><td>{_e(c.get('backend') or '')}</td>"
            f"<td class=num>{_bytes(c.get('bytes_up'))}</td>"
            f"<td class=num>{_bytes(c.get('bytes_down'))}</td>"
            f"<td class=num>{_duration(float(c.get('age') or 0))}</td>"
            f"<td>{_e(c.get('phase'))}</td></tr>"
        )
    return head + "\n<table>\n" + "\n".join(rows) + "\n</table>" + _more(len(conns))


def _handshakes(shakes: list[dict[str, Any]]) -> str:
    head = f"<h2>Recent TLS handshakes ({len(shakes)}, newest first)</h2>"
    if not shakes:
        return head + "\n<p class=none>no handshakes yet</p>"
    rows = [
        "<tr><th>Time</th><th>Client</th><th>Endpoint</th><th>SNI received</th>"
        "<th>SNI sent upstream</th><th>ALPN</th><th>Route</th><th>Mode</th>"
        "<th>Verified</th><th>Outcome</th></tr>"
    ]
    rows += [_handshake_row(h) for h in shakes[:MAX_ROWS]]
    return head + "\n<table>\n" + "\n".join(rows) + "\n</table>" + _more(len(shakes))


def _handshake_row(h: dict[str, Any]) -> str:
    sni, upstream = h.get("sni"), h.get("upstream_sni")
    mismatch = bool(h.get("reoriginated")) and upstream != sni
    outcome = str(h.get("outcome", ""))
    failed = h.get("verified") is False or outcome not in OK_OUTCOMES
    classes = " ".join(c for c, on in (("mismatch", mismatch), ("failed", failed)) if on)
    tr = f"<tr class='{classes}'>" if classes else "<tr>"
    sent = _sni(upstream)
    if mismatch:
        sent = f"<span class=mark>≠</span>&nbsp;{sent}"
    if outcome in OK_OUTCOMES:
        shown = _e(outcome)
    else:
        shown = f"<span class=mark>FAILED</span> {_e(outcome)}"
    return (
        f"{tr}<td>{_clock(h.get('time'))}</td><td>{_e(h.get('client'))}</td>"
        f"<td>{_e(h.get('endpoint'))}</td><td>{_sni(sni)}</td><td>{sent}</td>"
        f"<td>{_e(', '.join(str(a) for a in h.get('alpn') or []))}</td>"
        f"<td>{_e(h.get('route') or '')}</td><td>{_e(h.get('mode') or '')}</td>"
        f"<td>{_verified(h.get('verified'))}</td><td>{shown}</td></tr>"
    )


# -- small formatters --------------------------------------------------------------------


def _e(value: Any) -> str:
    """`value` as HTML text, quotes included (safe in element text and attributes)."""
    return html.escape(str(value), quote=True)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _sni(name: Any) -> str:
    return "<span class=none>none</span>" if name is None else _e(name)


def _names(names: Any, route: Any) -> str:
    if isinstance(names, str):
        names = [names]
    if names:
        return "<br>".join(_e(n) for n in names)
    label = "(default: anything else)" if route == "default" else "—"
    return f"<span class=none>{label}</span>"


def _verified(value: Any) -> str:
    if value is None:
        return "<span class=none>n/a</span>"
    return "yes" if value else "<span class=mark>FAILED</span>"


def _more(total: int) -> str:
    if total <= MAX_ROWS:
        return ""
    return f"\n<p class=more>... and {total - MAX_ROWS} more</p>"


def _clock(t: Any) -> str:
    """Unix seconds as UTC HH:MM:SS."""
    try:
        return time.strftime("%H:%M:%S", time.gmtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _duration(seconds: float) -> str:
    """3725 -> "1h 02m 05s"; whole seconds, the largest unit first."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def _bytes(n: Any) -> str:
    """1536 -> "1.5 KiB"."""
    try:
        size = float(n)
    except (TypeError, ValueError):
        return "?"
    units = ["B", "KiB", "MiB", "GiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{int(size)} B" if units[0] == "B" else f"{size:.1f} {units[0]}"
