"""realm's legacy v1 pairing, table-driven, and `snirelay convert`'s round trip per row.

The cases of realm 2.9.4's own tests (``src/conf/legacy/mod.rs``: ``flatten_ports``
and ``join_addr_port``), its ``examples/legacy.json``, and issue 13's two rows; every
row gives the (listen -> remote) pairs realm makes. Each row is then converted (TOML and
JSON, through `snirelay.convert.main`) and the converted file must load into the same
map as the legacy file itself, with no port range written (realm cannot load one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.relay import relay_env
from snirelay import convert
from snirelay.config.legacy import (
    MAX_LISTEN_PORTS,
    convert_legacy,
    flatten_ports,
    join_addr_port,
    legacy_pairs,
)
from snirelay.config.load import load_config, load_documents
from snirelay.config.model import ConfigError


def doc(
    lports: list[Any], raddrs: list[str], rports: list[Any], laddrs: list[str] | None = None
) -> dict[str, Any]:
    """A v1 document (listen addresses default to one loopback address)."""
    return {
        "listening_addresses": laddrs or ["127.0.0.1"],
        "listening_ports": lports,
        "remote_addresses": raddrs,
        "remote_ports": rports,
    }


# ---------------------------------------------------------------- realm's own tests

ABC = ["a.com", "b.com", "c.com"]

# realm's flatten_ports test: four spellings of 1..4
FLATTEN = [["1-4"], ["1-2", "3-4"], ["1-3", "4"], ["1", "2", "3", "4"]]


@pytest.mark.parametrize("entries", FLATTEN, ids=str)
def test_flatten_ports_as_realm(entries: list[str]) -> None:
    assert flatten_ports(entries, "listening_ports") == [1, 2, 3, 4]


# realm's join_addr_port test: (addrs, ports, len, result)
JOIN = [
    (ABC, [1, 2, 3], 3, ["a.com:1", "b.com:2", "c.com:3"]),
    (ABC, [1, 2, 3], 2, ["a.com:1", "b.com:2"]),
    (ABC, [1, 2, 3], 4, ["a.com:1", "b.com:2", "c.com:3", "a.com:1"]),
    (ABC, [1, 2, 3, 4, 5, 6], 4, ["a.com:1", "b.com:2", "c.com:3", "a.com:4"]),
    ([*ABC, "d.com", "e.com"], [1, 2, 3], 4, ["a.com:1", "b.com:2", "c.com:3", "d.com:1"]),
    (ABC, [1, 2, 3], 5, ["a.com:1", "b.com:2", "c.com:3", "a.com:1", "a.com:1"]),
]


@pytest.mark.parametrize("addrs,ports,n,result", JOIN)
def test_join_addr_port_as_realm(
    addrs: list[str], ports: list[int], n: int, result: list[str]
) -> None:
    assert [f"{h}:{p}" for h, p in join_addr_port(addrs, ports, n)] == result


# ---------------------------------------------------------------- the table of documents

# (id, document, [(listen, remote), ...] in realm's order)
ROWS: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    *(
        (
            f"realm-join-{i}",
            doc([f"7001-{7000 + n}"], addrs, [str(p) for p in ports]),
            [(f"127.0.0.1:{7001 + k}", r) for k, r in enumerate(result)],
        )
        for i, (addrs, ports, n, result) in enumerate(JOIN)
    ),
    *(
        (
            f"realm-flatten-{i}",
            doc(entries, ["r"], ["9001-9004"]),
            [(f"127.0.0.1:{p}", f"r:{9000 + p}") for p in (1, 2, 3, 4)],
        )
        for i, entries in enumerate(FLATTEN)
    ),
    (
        # realm's examples/legacy.json (addresses as in realm's file)
        "realm-example",
        {
            "listening_addresses": ["0.0.0.0"],
            "listening_ports": ["8080-8088"],
            "remote_addresses": ["1.1.1.1", "2.2.2.2"],
            "remote_ports": ["443"],
        },
        [("0.0.0.0:8080", "1.1.1.1:443"), ("0.0.0.0:8081", "2.2.2.2:443")]
        + [(f"0.0.0.0:{p}", "1.1.1.1:443") for p in range(8082, 8089)],
    ),
    (
        # issue 13: port 8081 goes to the second address
        "issue-second-address",
        doc(["8080", "8081"], ["a", "b"], ["443"]),
        [("127.0.0.1:8080", "a:443"), ("127.0.0.1:8081", "b:443")],
    ),
    (
        # issue 13: ranges need not line up entry by entry
        "issue-mixed-ranges",
        doc(["7000-7001", "7002"], ["r"], ["8000", "8001-8002"]),
        [("127.0.0.1:7000", "r:8000"), ("127.0.0.1:7001", "r:8001"), ("127.0.0.1:7002", "r:8002")],
    ),
    (
        "listen-addresses-and-ints",
        doc([5000, "5001", 5002], ["r"], [6000, "6001"], laddrs=["127.0.0.1", "::1"]),
        [("127.0.0.1:5000", "r:6000"), ("[::1]:5001", "r:6001"), ("127.0.0.1:5002", "r:6000")],
    ),
    (
        "unused-entries-and-leading-plus",
        doc(["+80"], ["r", "unused.example"], ["0443", "1-65535"], laddrs=["127.0.0.1", "::"]),
        [("127.0.0.1:80", "r:443")],
    ),
]
IDS = [row[0] for row in ROWS]


@pytest.mark.parametrize("data,pairs", [row[1:] for row in ROWS], ids=IDS)
def test_pairs_as_realm(data: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    got = [
        (f"{p.listen_host}:{p.listen_port}", f"{p.remote_host}:{p.remote_port}")
        for p in legacy_pairs(data)
    ]
    assert got == pairs


@pytest.mark.parametrize(
    "data,endpoints",
    [
        (ROWS[IDS.index("issue-mixed-ranges")][1], [("127.0.0.1:7000-7002", "r:8000-8002")]),
        (
            ROWS[IDS.index("issue-second-address")][1],
            [("127.0.0.1:8080", "a:443"), ("127.0.0.1:8081", "b:443")],
        ),
        (
            # same addresses, but the remote ports do not go up: one endpoint each
            doc(["7000-7002"], ["r"], ["8000"]),
            [(f"127.0.0.1:{p}", "r:8000") for p in (7000, 7001, 7002)],
        ),
        (
            # a change of remote address splits the run; contiguous again after it
            doc(["7000-7004"], ["r", "s"], ["8000-8004"]),
            [("127.0.0.1:7000", "r:8000"), ("127.0.0.1:7001", "s:8001")]
            + [("127.0.0.1:7002-7004", "r:8002-8004")],
        ),
        (
            doc(["1-65535"], ["r"], ["1-65535"]),
            [("127.0.0.1:1-65535", "r:1-65535")],
        ),
    ],
    ids=["mixed", "two-addresses", "one-remote-port", "split", "every-port"],
)
def test_ranges_merge_only_contiguous_runs(
    data: dict[str, Any], endpoints: list[tuple[str, str]]
) -> None:
    got = convert_legacy(data)["endpoints"]
    assert [(e["listen"], e["remote"]) for e in got] == endpoints


# ---------------------------------------------------------------- convert's round trip


def routing(path: Path) -> list[tuple[str, str]]:
    """(listen -> remote) for every endpoint a config file loads into, in order."""
    out = []
    for ep in load_config(str(path)).endpoints:
        (remote,) = ep.upstream.remotes  # a legacy endpoint has exactly one
        out.append((str(ep.listen), str(remote)))
    return out


@pytest.mark.parametrize("kind", ["toml", "json"])
@pytest.mark.parametrize("data,pairs", [row[1:] for row in ROWS], ids=IDS)
def test_convert_round_trip(
    tmp_path: Path, kind: str, data: dict[str, Any], pairs: list[tuple[str, str]]
) -> None:
    old, new = tmp_path / "old.json", tmp_path / f"new.{kind}"
    old.write_text(json.dumps(data))
    assert convert.main([str(old), "-t", kind, "-o", str(new)]) == 0
    text = new.read_text()
    parsed = tomllib.loads(text) if kind == "toml" else json.loads(text)
    # what realm itself can run: one host:port per side, one endpoint per legacy pair
    assert [(e["listen"], e["remote"]) for e in parsed["endpoints"]] == pairs
    assert routing(new) == routing(old) == pairs


def test_convert_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc(["8080", "8081"], ["a", "b"], ["443"])))
    assert convert.main([str(old)]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads(out) == {
        "endpoints": [
            {"listen": "127.0.0.1:8080", "remote": "a:443"},
            {"listen": "127.0.0.1:8081", "remote": "b:443"},
        ]
    }


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"endpoints": []}', "not a legacy v1 config"),
        (json.dumps(doc(["9-5"], ["r"], ["1"])), "old.json: listening_ports[0]: empty port range"),
        ("{", "old.json: invalid JSON"),
    ],
)
def test_convert_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    old = tmp_path / "old.json"
    old.write_text(text)
    assert convert.main([str(old), "-o", str(tmp_path / "new.toml")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "new.toml").exists()


def test_convert_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert convert.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


# ---------------------------------------------------------------- errors: one line, the entry

GOOD = doc(["7000"], ["r"], ["8000"])
ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"listening_ports": ["7000", "x"]}, "listening_ports[1]: expected a port or a range"),
    ({"remote_ports": ["8000", "1", "9-5"]}, "remote_ports[2]: empty port range '9-5'"),
    ({"listening_ports": ["0"]}, "listening_ports[0]: port 0 out of range (1-65535)"),
    ({"remote_ports": ["1-65536"]}, "remote_ports[0]: port 65536 out of range (1-65535)"),
    ({"remote_ports": ["9" * 5000]}, "remote_ports[0]: port 999999999999... out of range"),
    ({"listening_ports": ["1-2-3"]}, "listening_ports[0]: expected a port or a range"),
    ({"listening_ports": [" 7000"]}, "listening_ports[0]: expected a port or a range"),
    ({"listening_ports": [""]}, "listening_ports[0]: expected a port or a range"),
    ({"listening_ports": [True]}, "listening_ports[0]: expected a port or a range like "),
    ({"listening_ports": [7000.0]}, "listening_ports[0]: expected a port or a range"),
    ({"remote_ports": []}, "remote_ports: expected a non-empty array of ports, got empty"),
    ({"remote_addresses": []}, "remote_addresses: expected a non-empty array of addresses"),
    ({"listening_addresses": "0.0.0.0"}, "listening_addresses: expected a non-empty array"),
    ({"remote_addresses": ["r", "a b"]}, "remote_addresses[1]: expected an IP address or a host"),
    ({"remote_addresses": ["[1.2.3.4]"]}, "remote_addresses[0]: expected an IP address"),
    ({"listening_addresses": [7]}, "listening_addresses[0]: expected an address string"),
    ({"listening_ports": ["7000", "6999-7001"]}, "listening_ports[1]: 127.0.0.1:7000 is listened"),
    ({"listening_ports": ["1-65535", "1"]}, f"listening_ports[1]: more than {MAX_LISTEN_PORTS}"),
    ({"listening_port": ["1"]}, "listening_port: unknown key (did you mean 'listening_ports'"),
]


@pytest.mark.parametrize("change,needle", ERRORS, ids=[e[1].split(":")[0] for e in ERRORS])
def test_errors_name_the_entry(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        legacy_pairs({**GOOD, **change})
    assert str(info.value).startswith(needle), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_list() -> None:
    data = dict(GOOD)
    del data["remote_ports"]
    with pytest.raises(ConfigError, match=r"^remote_ports: missing"):
        legacy_pairs(data)


def test_same_port_on_two_addresses_is_fine() -> None:
    pairs = legacy_pairs(doc(["7000", "7000"], ["r"], ["1"], laddrs=["127.0.0.1", "127.0.0.2"]))
    assert [(p.listen_host, p.listen_port) for p in pairs] == [
        ("127.0.0.1", 7000),
        ("127.0.0.2", 7000),
    ]


# ---------------------------------------------------------------- any document

_junk_port = st.one_of(
    st.integers(min_value=-1, max_value=70000),
    st.integers(min_value=0, max_value=70000).map(str),
    st.tuples(st.integers(0, 70000), st.integers(-2, 40)).map(lambda t: f"{t[0]}-{t[0] + t[1]}"),
    st.text(alphabet="0123456789-+ x", max_size=8),
    st.booleans(),
)
_junk_addr = st.sampled_from(["127.0.0.1", "::1", "[::1]", "a.example", "", "a b", "[1.2.3.4]", 5])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_junk_port, max_size=4),
    st.lists(_junk_addr, max_size=3),
    st.lists(_junk_addr, max_size=3),
    st.lists(_junk_port, max_size=4),
)
def test_any_document_gives_pairs_or_one_line_naming_a_list(
    lports: list[Any], laddrs: list[Any], raddrs: list[Any], rports: list[Any]
) -> None:
    data = {
        "listening_addresses": laddrs,
        "listening_ports": lports,
        "remote_addresses": raddrs,
        "remote_ports": rports,
    }
    try:
        legacy_pairs(data)
    except ConfigError as exc:
        assert "\n" not in str(exc) and exc.place.split("[")[0] in data, exc


# valid documents: distinct listen ports (so no port is listened on twice)
_span = st.tuples(st.integers(1, 65500), st.integers(0, 5))
_entry = st.one_of(
    _span.map(lambda t: f"{t[0]}-{t[0] + t[1]}"),
    st.integers(1, 65535),
    st.integers(1, 65535).map(str),
)
_good_addr = st.sampled_from(["127.0.0.1", "127.0.0.2", "::1", "a.example", "b.example"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_span, min_size=1, max_size=4),
    st.lists(_good_addr, min_size=1, max_size=3),
    st.lists(_good_addr, min_size=1, max_size=3),
    st.lists(_entry, min_size=1, max_size=4),
)
def test_ranges_or_not_the_loader_sees_realm_pairs(
    spans: list[tuple[int, int]], laddrs: list[str], raddrs: list[str], rports: list[Any]
) -> None:
    lports: list[Any] = []
    used: set[int] = set()
    for first, extra in spans:  # keep the spans that do not overlap earlier ones
        ports = set(range(first, first + extra + 1))
        if not ports & used:
            used |= ports
            lports.append(f"{first}-{first + extra}" if extra else first)
    data = {
        "listening_addresses": laddrs,
        "listening_ports": lports,
        "remote_addresses": raddrs,
        "remote_ports": rports,
    }
    pairs = legacy_pairs(data)
    assert len(pairs) == len(used)
    want = [(f"{p.listen_host}:{p.listen_port}", f"{p.remote_host}:{p.remote_port}") for p in pairs]
    for ranges in (True, False):
        modern = convert_legacy(data, ranges=ranges)
        eps = load_documents([("", modern)]).endpoints
        assert [(str(ep.listen), str(ep.upstream.remotes[0])) for ep in eps] == want


def test_convert_to_a_closed_pipe_has_no_traceback(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc(["8080", "8081"], ["a", "b"], ["443"])))
    code = "import sys; from snirelay.convert import main; sys.exit(main(sys.argv[1:]))"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write (`| true`)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(old)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=relay_env(),
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr and b"Exception ignored" not in proc.stderr, proc.stderr


def test_every_bad_entry_is_reported_at_once(tmp_path: Path) -> None:
    """As for a modern file: each list, and each entry of one, on its own line."""
    from snirelay.config.notes import error_lines

    bad = {
        "listening_addresses": ["127.0.0.1", "not an address!"],
        "listening_ports": ["5000", "9-5", "x"],
        "remote_addresses": ["127.0.0.1"],
        "remote_ports": ["0"],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    places = [line.split(": ")[1] for line in error_lines(info.value)]
    assert places == [
        "listening_ports[1]",
        "listening_ports[2]",
        "remote_ports[0]",
        "listening_addresses[1]",
    ]
