"""Tests for snirelay.routing: patterns, first-match order, `when` routes, hints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snirelay.config.model import Addr, Route, Upstream
from snirelay.routing import RouteTable, compile_pattern, match_name, normalize_name


def route(i: int, *names: str, when: str | None = None) -> Route:
    return Route(
        place=f"endpoints[0].routes[{i}]",
        upstream=Upstream(remotes=(Addr("127.0.0.1", 1000 + i),)),
        server_names=names,
        when=when,
    )


def table(*specs: tuple[str, ...] | str) -> RouteTable:
    """Each spec is a tuple of server names, or a `when` condition string."""
    routes = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            routes.append(route(i, when=spec))
        else:
            routes.append(route(i, *spec))
    return RouteTable(routes)


def idx(t: RouteTable, name: str | None, tls: bool = True, ip: bool = False) -> int | None:
    picked = t.pick(name, tls=tls, name_is_ip=ip)
    index = t.pick_index(name, tls=tls, name_is_ip=ip)
    assert (picked is None) == (index is None)
    if picked is not None:
        assert index is not None and picked is t.routes[index]
    return index


# --- patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("emby.example.com", "emby.example.com", True),
        ("Emby.Example.COM.", "emby.example.com", True),
        ("emby.example.com", "EMBY.example.com.", True),
        ("emby.example.com", "x.emby.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.c.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", ".example.com", False),
        ("*.Example.com.", "A.EXAMPLE.COM", True),
        ("~^media[0-9]+\\.example\\.org$", "media12.example.org", True),
        ("~media[0-9]+\\.example\\.org", "media12.example.org", True),
        ("~media[0-9]+\\.example\\.org", "xmedia12.example.org", False),  # anchored start
        ("~media[0-9]+\\.example\\.org", "media12.example.org.uk", False),  # anchored end
        ("~MEDIA[0-9]+\\.example\\.org", "media1.example.org", True),  # case-insensitive
        ("bücher.example", "xn--bcher-kva.example", True),  # IDN pattern -> A-label
    ],
)
def test_match_name(pattern: str, name: str, expected: bool) -> None:
    assert match_name(pattern, name) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("~(unclosed", "invalid regex '(unclosed'"),
        ("~", "invalid regex"),
        ("", "empty server name"),
        ("*", "invalid wildcard"),
        ("*.", "invalid wildcard"),
        ("a.*.example.com", "invalid wildcard"),
        ("*example.com", "invalid wildcard"),
        ("*.*.example.com", "invalid wildcard"),
        ("a..b", "invalid server name"),
    ],
)
def test_compile_pattern_errors(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        compile_pattern(pattern)


def test_compile_pattern_kinds() -> None:
    assert compile_pattern("A.B.").kind == "exact"
    assert compile_pattern("A.B.").value == "a.b"
    assert compile_pattern("*.B").value == "b"
    assert compile_pattern("~x").kind == "regex"


def test_normalize_name() -> None:
    assert normalize_name("Emby.Example.com.") == "emby.example.com"
    assert normalize_name("bücher.example") == "xn--bcher-kva.example"


def test_table_error_names_its_place() -> None:
    routes = [route(0, "a.com"), route(1, "b.com", "~(bad")]
    with pytest.raises(ValueError, match=r"^endpoints\[0\]\.routes\[1\]\.server_names\[1\]: "):
        RouteTable(routes)
    with pytest.raises(ValueError, match=r"^endpoints\[0\]\.routes\[0\]\.when: unknown"):
        RouteTable([route(0, when="sometimes")])


# --- first match wins -----------------------------------------------------------------


def test_exact_wildcard_regex() -> None:
    t = table(("emby.example.com",), ("*.example.com", "~^media[0-9]+\\.example\\.org$"))
    assert idx(t, "emby.example.com") == 0
    assert idx(t, "jellyfin.example.com") == 1
    assert idx(t, "a.b.example.com") == 1
    assert idx(t, "media7.example.org") == 1
    assert idx(t, "example.com") is None
    assert idx(t, "other.net") is None
    assert idx(t, "EMBY.example.com.") == 0  # normalised defensively


def test_earlier_wildcard_beats_later_exact() -> None:
    t = table(("*.example.com",), ("emby.example.com",))
    assert idx(t, "emby.example.com") == 0


def test_earlier_regex_beats_later_exact_and_wildcard() -> None:
    t = table(("~e.*",), ("emby.example.com",), ("*.example.com",))
    assert idx(t, "emby.example.com") == 0
    assert idx(t, "x.example.com") == 2


def test_later_regex_loses_to_earlier_exact() -> None:
    t = table(("emby.example.com",), ("~.*",))
    assert idx(t, "emby.example.com") == 0
    assert idx(t, "anything") == 1


def test_nested_wildcards_earliest_wins() -> None:
    t = table(("*.example.com",), ("*.b.example.com",))
    assert idx(t, "a.b.example.com") == 0
    t = table(("*.b.example.com",), ("*.example.com",))
    assert idx(t, "a.b.example.com") == 0
    assert idx(t, "a.c.example.com") == 1
    assert idx(t, "b.example.com") == 1


def test_duplicate_exact_name_first_route_wins() -> None:
    t = table(("a.com",), ("a.com",))
    assert idx(t, "a.com") == 0


# --- when conditions ------------------------------------------------------------------


def test_when_routes() -> None:
    t = table("not_tls", ("emby.example.com",), "ip_sni", "no_sni")
    assert idx(t, None, tls=True) == 3
    assert idx(t, "192.0.2.1", tls=True, ip=True) == 2
    assert idx(t, "emby.example.com", tls=True) == 1
    assert idx(t, "unknown.example.com", tls=True) is None
    # plaintext HTTP: Host tried against server_names first, even past an earlier not_tls
    assert idx(t, "emby.example.com", tls=False) == 1
    assert idx(t, "unknown.example.com", tls=False) == 0
    assert idx(t, None, tls=False) == 0
    assert idx(t, "192.0.2.1", tls=False, ip=True) == 0


def test_ip_literal_never_matches_server_names() -> None:
    t = table(("~.*",), ("192.0.2.1",), ("*.0.2.1",))
    assert idx(t, "192.0.2.1", ip=True) is None
    assert idx(t, "2001:db8::1", ip=True) is None


def test_no_when_routes_means_none() -> None:
    t = table(("a.com",))
    assert idx(t, None) is None
    assert idx(t, None, tls=False) is None
    assert idx(t, "1.2.3.4", ip=True) is None


def test_empty_table() -> None:
    t = RouteTable([])
    assert idx(t, "a.com") is None
    assert idx(t, None) is None


# --- explain_miss ---------------------------------------------------------------------


def test_explain_no_sni() -> None:
    t = table(("emby.example.com",))
    hint = t.explain_miss(None, True, False)
    assert hint.startswith("client sent no server name (connected by IP?)")
    assert "curl --resolve NAME:PORT:RELAY_IP https://NAME:PORT/" in hint
    assert "\n" not in hint


def test_explain_ip_sni() -> None:
    hint = table(("a.com",)).explain_miss("192.0.2.1", True, True)
    assert "192.0.2.1" in hint and "ip_sni" in hint


def test_explain_not_tls() -> None:
    t = table(("emby.example.com",))
    assert "not_tls" in t.explain_miss(None, False, False)
    hint = t.explain_miss("emby.example.org", False, False)
    assert "emby.example.org" in hint and "emby.example.com" in hint


def test_explain_unknown_name_lists_closest() -> None:
    t = table(("emby.example.com", "other.net"), ("*.example.org",), ("jellyfin.example.com",))
    hint = t.explain_miss("emby2.example.com", True, False)
    assert "emby2.example.com" in hint
    closest = hint.split("closest configured: ")[1].split(";")[0].split(", ")
    assert closest[0] == "emby.example.com"
    assert set(closest[:2]) == {"emby.example.com", "jellyfin.example.com"}
    assert "\n" not in hint
    assert "no server_names configured" in table("no_sni").explain_miss("a.com", True, False)


# --- properties -----------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_name = st.lists(_label, min_size=1, max_size=5).map(".".join)
_pattern = st.one_of(
    _name,
    _name.map(lambda n: "*." + n),
    _name.map(lambda n: "~" + n.replace(".", "\\.")),
    _name.map(lambda n: "~.*" + n.split(".")[-1]),
)


@given(st.lists(st.lists(_pattern, min_size=1, max_size=3), max_size=6), _name)
def test_pick_equals_linear_scan(route_names: list[list[str]], name: str) -> None:
    """The precomputed lookup gives the same answer as trying every route in order."""
    t = table(*(tuple(names) for names in route_names))
    expected = next(
        (i for i, names in enumerate(route_names) if any(match_name(p, name) for p in names)),
        None,
    )
    assert idx(t, name) == expected
    assert isinstance(t.explain_miss(name, True, False), str)


# --- regex routes run on RE2 (linear time) ----------------------------------------------

_NESTED = "~^(a+)+\\.example\\.com$"
_CHILD = """
import sys, time
from snirelay.config.model import Addr, Route, Upstream
from snirelay.routing import RouteTable
route = Route("endpoints[0].routes[0]", Upstream((Addr("127.0.0.1", 1),)), (sys.argv[1],))
table = RouteTable([route])
worst = 0.0
for n in (200, 400, 1000, 4000):
    for name, want in (("a" * n + ".example.com", 0), ("a" * n + ".example.co", None)):
        t0 = time.perf_counter()
        got = table.pick_index(name, tls=True, name_is_ip=False)
        worst = max(worst, time.perf_counter() - t0)
        assert got == want, (n, name[-12:], got)
print(worst)
"""


def test_nested_quantifier_regex_matches_in_linear_time() -> None:
    """Issue 7 (hostile input): with Python's backtracking `re`, `^(a+)+\\.example\\.com$`
    against 26 a's and a near miss took 6.2 s, doubling with every extra byte, so one
    200-byte ClientHello stalled the event loop for good. On RE2 a name costs time in
    proportion to its length: names of 200 to 4000 bytes, matching and missing, each
    take microseconds. The matching runs in a child process with a deadline, so the
    backtracking engine makes this test fail (TimeoutExpired) instead of hanging; the
    1 s bound per name is generous for a shared CI machine (measured: ~20 us)."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, _NESTED],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 1.0, proc.stdout


@pytest.mark.parametrize(
    ("source", "construct"),
    [
        ("(a)\\1\\.example\\.com", "a backreference \\1"),
        ("(?P<x>a)(?P=x)\\.com", "a named backreference (?P=name)"),
        ("(?=media)\\w+\\.example\\.org", "a lookahead (?=...)"),
        ("(?!www)\\w+\\.example\\.org", "a negative lookahead (?!...)"),
        ("\\w+(?<=1)\\.example\\.org", "a lookbehind (?<=...)"),
        ("\\w+(?<!1)\\.example\\.org", "a negative lookbehind (?<!...)"),
        ("(?>a+)\\.com", "an atomic group (?>...)"),
        ("a++\\.com", "a possessive quantifier ++"),
        ("(a)?(?(1)b|c)\\.com", "a conditional group (?(1)...)"),
        ("a\\.com\\Z", "\\Z (write \\z or $)"),
    ],
)
def test_regex_constructs_re2_lacks_are_refused(source: str, construct: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_pattern("~" + source)
    message = str(info.value)
    assert message.startswith(f"regex {source!r} uses {construct}: RE2 has no "), message
    assert "\n" not in message


def test_backreference_refused_when_the_table_is_built() -> None:
    routes = [route(0, "a.com"), route(1, "b.com", "~(a)\\1\\.example\\.com")]
    with pytest.raises(ValueError) as info:
        RouteTable(routes)
    assert str(info.value) == (
        "endpoints[0].routes[1].server_names[1]: regex '(a)\\\\1\\\\.example\\\\.com' uses a "
        "backreference \\1: RE2 has no backreferences, lookaround, atomic groups, possessive "
        "quantifiers or conditionals (regex routes run on RE2 so that no name costs more "
        "than its length)"
    )


def test_regex_python_rejects_keeps_pythons_message() -> None:
    with pytest.raises(ValueError, match=r"^invalid regex '\(a': missing \), unterminated"):
        compile_pattern("~(a")


def test_regex_re2_cannot_compile() -> None:
    """Valid in Python, too big for RE2's repetition limit: refused, saying so."""
    with pytest.raises(
        ValueError, match=r"^regex 'a\{2000\}' repeats 2000 times: RE2 allows at most 1000"
    ):
        compile_pattern("~a{2000}")


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("~(?P<n>media)[0-9]+\\.example\\.org", "MEDIA1.example.org", True),  # named group
        ("~[[:alpha:]]+\\.example\\.org", "media.example.org", True),  # POSIX class
        ("~\\bmedia\\b.*", "media.example.org", True),
        ("~media\\.example\\.org", "media.example.org\n", False),  # no "$ before newline"
        ("~.*\\.org", "bücher.org", True),  # a non-ASCII name (never sent on the wire)
    ],
)
def test_regex_semantics_on_re2(pattern: str, name: str, expected: bool) -> None:
    t = table((pattern,))
    assert (idx(t, name) == 0) is expected


def test_backreference_refused_at_config_load(tmp_path: Path) -> None:
    from snirelay.config.load import load_config
    from snirelay.config.model import ConfigError

    cfg = tmp_path / "relay.toml"
    cfg.write_text(
        '[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:2"\n'
        "[[endpoints.routes]]\n"
        'server_names = ["a.example.com", "~(a)\\\\1\\\\.example\\\\.com"]\n'
        'remote = "127.0.0.1:3"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg))
    message = str(info.value)
    assert "endpoints[0].routes[0].server_names[1]: regex " in message, message
    assert "uses a backreference \\1: RE2 has no" in message and "\n" not in message


def test_a_miss_hint_costs_bounded_work_whatever_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client chooses the names that miss: the hint compares at most NEAR_MAX
    configured names (it compared every one: 31 ms per miss with 1,000 names)."""
    import difflib

    from snirelay import routing
    from snirelay.config.model import Route, Upstream

    names = tuple(f"host{i}.zone{i % 50}.example.com" for i in range(2000))
    t = routing.RouteTable([Route(place="r", upstream=Upstream(remotes=()), server_names=names)])
    calls = 0
    real = difflib.SequenceMatcher

    def counting(*args: Any, **kw: Any) -> difflib.SequenceMatcher[str]:
        nonlocal calls
        calls += 1
        return real(*args, **kw)

    monkeypatch.setattr(difflib, "SequenceMatcher", counting)
    hint = t.explain_miss("hosts7.zone7.example.com", tls=True, name_is_ip=False)
    assert 0 < calls <= routing.NEAR_MAX, calls
    assert "host7.zone7.example.com" in hint or "zone7.example.com" in hint, hint
    calls = 0
    t.explain_miss("unrelated.test", tls=True, name_is_ip=False)
    assert 0 < calls <= routing.NEAR_MAX, calls
