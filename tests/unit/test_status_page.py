"""The status page (`observe.status.render`): what a person reading it would see.

Documents are built here, shaped like the API's `/status.json`. The page is read back
with html.parser into tables of rows (each row: its class and the text of its cells),
so the checks are about the visible text: endpoint addresses, route places, UP/DOWN per
backend, the marked rows in the handshakes table, the row caps, the stopping banner,
and that hostile values from the network are shown as text, never as markup.
"""

from __future__ import annotations

import time
from html.parser import HTMLParser
from typing import Any

import pytest

from snirelay.observe.status import render

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


class Row:
    def __init__(self, cls: str) -> None:
        self.cls = cls
        self.cells: list[str] = []

    @property
    def text(self) -> str:
        return " | ".join(self.cells)


class Page(HTMLParser):
    """The rendered page as tables of rows, the h2 headings, and all its text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[Row]] = []
        self.headings: list[str] = []
        self.paragraphs: list[tuple[str, str]] = []  # (class, text)
        self.texts: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._cell: list[str] | None = None
        self._buf: list[str] | None = None
        self.feed(markup)
        self.close()

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(Row(dict(attrs).get("class") or ""))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h2", "p"):
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "h2" and self._buf is not None:
            self.headings.append("".join(self._buf).strip())
            self._buf = None
        elif tag == "p" and self._buf is not None:
            cls = next((a.get("class") or "" for t, a in reversed(self.tags) if t == "p"), "")
            self.paragraphs.append((cls, "".join(self._buf).strip()))
            self._buf = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._buf is not None:
            self._buf.append(data)

    def table(self, header: str) -> list[Row]:
        """The data rows of the table whose header row contains `header`."""
        for rows in self.tables:
            if rows and header in rows[0].cells:
                return rows[1:]
        raise AssertionError(f"no table with a {header!r} column")

    def row(self, header: str, needle: str) -> Row:
        """The one row of that table whose text contains `needle`."""
        found = [r for r in self.table(header) if needle in r.text]
        assert len(found) == 1, f"{len(found)} rows with {needle!r}: {[r.text for r in found]}"
        return found[0]


def backend(remote: str, up: bool, *, tried: bool = True, error: str | None = None) -> Any:
    return {
        "remote": remote,
        "up": up,
        "tried": tried,
        "recent_failures": 0 if up else 3,
        "last_error": error,
    }


def route(place: str, names: list[str], mode: str, backends: list[Any], live: int = 0) -> Any:
    return {
        "route": place,
        "names": names,
        "mode": mode,
        "description": f"{mode}: what it does",
        "backends": backends,
        "live": live,
    }


def handshake(**kw: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "time": 1796647416.886,
        "client": "127.0.0.1:55704",
        "sni": "app.example.com",
        "alpn": ["h2", "http/1.1"],
        "endpoint": "127.0.0.1:8443",
        "route": "endpoints[0].routes[0]",
        "mode": "passthrough",
        "upstream_sni": "app.example.com",
        "reoriginated": False,
        "verified": None,
        "outcome": "passthrough",
    }
    h.update(kw)
    return h


def connection(n: int, sni: str | None = "app.example.com") -> dict[str, Any]:
    return {
        "id": n,
        "client": f"127.0.0.1:{40000 + n}",
        "endpoint": "127.0.0.1:8443",
        "sni": sni,
        "route": "endpoints[0].routes[0]",
        "backend": "127.0.0.1:33713",
        "bytes_up": 1536,
        "bytes_down": 5 << 20,
        "age": 12.5,
        "phase": "relaying",
    }


def sample(**kw: Any) -> dict[str, Any]:
    """Two endpoints as in the API's sample: a TLS one with three routes (two down),
    a forward one with two dead backends; one live connection, one handshake."""
    tls = {
        "endpoint": "127.0.0.1:8443",
        "place": "endpoints[0]",
        "routes": [
            route(
                "endpoints[0].routes[0]",
                ["app.example.com", "*.media.example.com"],
                "passthrough",
                [backend("127.0.0.1:33713", False, error="127.0.0.1:33713: Connection refused")],
                live=1,
            ),
            route(
                "endpoints[0].routes[1]",
                ["relay.example.com"],
                "terminate+reoriginate",
                [backend("127.0.0.1:7001", True)],
            ),
            route("default", [], "passthrough", [backend("127.0.0.1:7002", True, tried=False)]),
        ],
    }
    plain = {
        "endpoint": "127.0.0.1:8080",
        "place": "endpoints[1]",
        "routes": [
            route(
                "default",
                [],
                "forward",
                [
                    backend("127.0.0.1:9", False, error="127.0.0.1:9: Connection refused"),
                    backend("127.0.0.1:10", False, error="127.0.0.1:10: Connection refused"),
                ],
            )
        ],
    }
    view: dict[str, Any] = {
        "endpoints": [tls, plain],
        "connections": [connection(1)],
        "handshakes": [handshake()],
        "started": time.time() - 3725,
        "stopping": False,
    }
    view.update(kw)
    return view


def page(view: dict[str, Any]) -> Page:
    return Page(render(view))


# -- the page as a whole -------------------------------------------------------------------


def test_a_self_contained_page_that_refreshes_itself() -> None:
    markup = render(sample())
    assert markup.startswith("<!doctype html>")
    assert '<meta http-equiv="refresh" content="5">' in markup
    assert "<style>" in markup
    p = Page(markup)
    tags = {t for t, _ in p.tags}
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert not [a for _, a in p.tags if "src" in a or "href" in a]


def test_header_shows_name_uptime_and_totals() -> None:
    p = page(sample(connections=[connection(1), connection(2), connection(3)]))
    summary = dict(p.paragraphs)["summary"]
    assert p.text.lstrip().startswith("snirelay")
    assert summary.startswith("up 1h 02m 0"), summary  # 3725 s, give or take a second
    assert "3 live connections" in summary
    assert "2 endpoints" in summary


def test_stopping_banner_only_when_stopping() -> None:
    calm = page(sample())
    assert "stopping" not in dict(calm.paragraphs)
    assert "STOPPING" not in calm.text
    stopping = page(sample(stopping=True))
    assert "STOPPING" in dict(stopping.paragraphs)["stopping"]


# -- endpoints, routes, backends -------------------------------------------------------------


def test_each_endpoint_by_address_and_place() -> None:
    p = page(sample())
    assert p.headings[:2] == ["127.0.0.1:8443 endpoints[0]", "127.0.0.1:8080 endpoints[1]"]


def test_routes_in_order_with_names_mode_and_live() -> None:
    p = page(sample())
    tls = p.tables[0]
    assert tls[0].cells[:4] == ["Route", "Names", "Mode", "Live"]
    places = [r.cells[0] for r in tls[1:]]
    assert places == ["endpoints[0].routes[0]", "endpoints[0].routes[1]", "default"]
    first = tls[1].cells
    assert first[1] == "app.example.com*.media.example.com"  # one name a line
    assert first[2:4] == ["passthrough", "1"]
    assert tls[2].cells[2] == "terminate+reoriginate"
    assert "default" in tls[3].cells[1]  # the default route says so instead of names


def test_backends_say_up_or_down_with_failures_and_error() -> None:
    p = page(sample())
    down = p.row("Backend", "127.0.0.1:33713")
    assert down.cells[-4:] == [
        "127.0.0.1:33713",
        "DOWN",
        "3",
        "127.0.0.1:33713: Connection refused",
    ]
    up = p.row("Backend", "127.0.0.1:7001")
    assert up.cells[-4:-2] == ["127.0.0.1:7001", "UP"]
    untried = p.row("Backend", "127.0.0.1:7002")
    assert untried.cells[-3].startswith("UP") and "not tried" in untried.cells[-3]
    markup = render(sample())
    assert "<span class='badge down'>DOWN</span>" in markup
    assert "<span class='badge up'>UP</span>" in markup


def test_every_backend_of_a_route_has_its_own_row() -> None:
    p = page(sample())
    forward = p.tables[1][1:]
    assert [r.cells[-4:-2] for r in forward] == [["127.0.0.1:9", "DOWN"], ["127.0.0.1:10", "DOWN"]]
    assert forward[0].cells[0] == "default" and len(forward[1].cells) == 4  # rowspan


# -- live connections ------------------------------------------------------------------------


def test_live_connections_table() -> None:
    p = page(sample(connections=[connection(7), connection(8, sni=None)]))
    row = p.row("Phase", "127.0.0.1:40007")
    assert row.cells == [
        "7",
        "127.0.0.1:40007",
        "127.0.0.1:8443",
        "app.example.com",
        "endpoints[0].routes[0]",
        "127.0.0.1:33713",
        "1.5 KiB",
        "5.0 MiB",
        "12s",
        "relaying",
    ]
    assert p.row("Phase", "127.0.0.1:40008").cells[3] == "none"


def test_no_connections_says_so() -> None:
    p = page(sample(connections=[]))
    assert "no live connections" in p.text
    with pytest.raises(AssertionError):
        p.table("Phase")


def test_connections_capped_at_200_with_a_more_line() -> None:
    p = page(sample(connections=[connection(n) for n in range(250)]))
    assert len(p.table("Phase")) == 200
    assert ("more", "... and 50 more") in p.paragraphs
    assert "Live connections (250)" in p.headings


# -- handshakes -------------------------------------------------------------------------------


def test_handshake_row_shows_both_snis_and_utc_time() -> None:
    p = page(sample(handshakes=[handshake(time=3661.5)]))
    (row,) = p.table("SNI received")
    assert row.cls == ""
    assert row.cells == [
        "01:01:01",
        "127.0.0.1:55704",
        "127.0.0.1:8443",
        "app.example.com",
        "app.example.com",
        "h2, http/1.1",
        "endpoints[0].routes[0]",
        "passthrough",
        "n/a",
        "passthrough",
    ]


def test_rewritten_upstream_sni_is_marked() -> None:
    rewritten = handshake(
        client="127.0.0.1:1111",
        sni="relay.example.com",
        upstream_sni="backend.internal",
        reoriginated=True,
        verified=True,
        outcome="ok",
        mode="terminate+reoriginate",
    )
    same = handshake(client="127.0.0.1:2222")
    p = page(sample(handshakes=[rewritten, same]))
    marked = p.row("SNI received", "127.0.0.1:1111")
    assert marked.cls == "mismatch"
    assert marked.cells[3] == "relay.example.com"
    assert marked.cells[4] == "≠\xa0backend.internal"
    assert marked.cells[8:] == ["yes", "ok"]
    assert p.row("SNI received", "127.0.0.1:2222").cls == ""


def test_reoriginated_with_the_same_sni_is_not_a_mismatch() -> None:
    same = handshake(reoriginated=True, verified=True, outcome="ok")
    (row,) = page(sample(handshakes=[same])).table("SNI received")
    assert row.cls == ""
    assert "≠" not in row.text


def test_failed_verification_is_marked() -> None:
    bad = handshake(
        sni="relay.example.com",
        upstream_sni="backend.internal",
        reoriginated=True,
        verified=False,
        outcome="tls-backend: certificate verify failed",
    )
    (row,) = page(sample(handshakes=[bad])).table("SNI received")
    assert set(row.cls.split()) == {"mismatch", "failed"}
    assert row.cells[8] == "FAILED"
    assert row.cells[9] == "FAILED tls-backend: certificate verify failed"


def test_unverified_backend_is_marked_even_when_the_outcome_is_ok() -> None:
    shake = handshake(reoriginated=True, verified=False, outcome="ok")
    (row,) = page(sample(handshakes=[shake])).table("SNI received")
    assert row.cls == "failed"
    assert row.cells[8:] == ["FAILED", "ok"]


@pytest.mark.parametrize("outcome", ["no-route", "connect-failed", "tls-client: bad record"])
def test_outcomes_other_than_ok_are_marked(outcome: str) -> None:
    (row,) = page(sample(handshakes=[handshake(outcome=outcome)])).table("SNI received")
    assert row.cls == "failed"
    assert row.cells[9] == f"FAILED {outcome}"


def test_missing_snis_show_none() -> None:
    shake = handshake(sni=None, upstream_sni=None, alpn=[], route=None, outcome="no-route")
    (row,) = page(sample(handshakes=[shake])).table("SNI received")
    assert row.cells[3:6] == ["none", "none", ""]


def test_handshakes_capped_at_200_newest_first() -> None:
    shakes = [handshake(client=f"127.0.0.1:{50000 + n}") for n in range(250)]
    p = page(sample(handshakes=shakes))
    rows = p.table("SNI received")
    assert len(rows) == 200
    assert rows[0].cells[1] == "127.0.0.1:50000"  # the document's order: newest first
    assert rows[-1].cells[1] == "127.0.0.1:50199"
    assert ("more", "... and 50 more") in p.paragraphs
    assert "127.0.0.1:50200" not in p.text


def test_no_more_line_at_exactly_200() -> None:
    p = page(sample(handshakes=[handshake()] * 200))
    assert len(p.table("SNI received")) == 200
    assert "more" not in dict(p.paragraphs)


# -- escaping -------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_values_are_text_not_markup(evil: str) -> None:
    view = sample(
        handshakes=[handshake(sni=evil, upstream_sni=evil, alpn=[evil], client=evil)],
        connections=[connection(1, sni=evil)],
    )
    tls = view["endpoints"][0]["routes"][0]
    tls["names"] = [evil]
    tls["description"] = evil
    tls["backends"][0]["last_error"] = evil
    markup = render(view)
    assert "<script" not in markup
    assert "<img" not in markup
    assert 'onerror=alert(1)>"' not in markup  # no attribute left open by a quote
    p = Page(markup)
    assert {t for t, _ in p.tags} <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "table",
        "tr",
        "th",
        "td",
        "span",
        "br",
    }
    (row,) = p.table("SNI received")
    assert row.cells[1] == evil and row.cells[3] == evil and row.cells[5] == evil
    assert p.row("Phase", "127.0.0.1:40001").cells[3] == evil
    assert p.row("Backend", "127.0.0.1:33713").cells[1] == evil
    assert p.row("Backend", "127.0.0.1:33713").cells[-1] == evil
    titles = [a["title"] for t, a in p.tags if t == "td" and "title" in a]
    assert evil in titles  # the description stays inside its attribute
