"""Property: on any document the loader returns a Config or raises ConfigError, nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from snirelay.config.endpoints import ENDPOINT_KEYS, ROUTE_KEYS
from snirelay.config.legacy import LEGACY_KEYS, convert_legacy, is_legacy
from snirelay.config.load import TOP_KEYS, load_documents
from snirelay.config.model import Config, ConfigError
from snirelay.config.network import NETWORK_KEYS
from snirelay.config.transport import parse_transport

_strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "127.0.0.1:1",
            "[::1]:2",
            "h.example:1-3",
            "127.0.0.1:5-7",
            "roundrobin: 2, 1",
            "iphash",
            "tls;sni=$sni",
            "tls;cert=a;key=b",
            "ws;host=h;path=/",
            "~[a-",
            "*.example.com",
            "no_sni",
            "0.0.0.0",
            "8080-8088",
        ]
    ),
)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(), _strings)
_keys = st.sampled_from(
    sorted({*TOP_KEYS, *ENDPOINT_KEYS, *ROUTE_KEYS, *NETWORK_KEYS, *LEGACY_KEYS, "level", "x"})
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_loader_only_raises_config_error(data: dict[str, Any]) -> None:
    try:
        if is_legacy(data):
            data = convert_legacy(data)
        assert isinstance(load_documents([("", data)]), Config)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="tlswsni=;$,.ab0rtcekyph/_ ", max_size=30),
    st.sampled_from(["listen", "remote"]),
)
def test_transport_only_raises_config_error(raw: str, side: str) -> None:
    try:
        parsed = parse_transport(raw, "p", side)
    except ConfigError as exc:
        assert str(exc).startswith("p"), exc  # errors name the place
    else:
        assert parsed.raw == raw


_route = st.dictionaries(st.sampled_from(ROUTE_KEYS), _values, max_size=5)
_endpoint = st.fixed_dictionaries(
    {"listen": st.sampled_from(["127.0.0.1:1", "127.0.0.1:5-7", "[::1]:0", "x"])},
    optional={
        "remote": _strings,
        "extra_remotes": st.lists(_strings, max_size=2),
        "balance": _strings,
        "routes": st.lists(_route, max_size=3),
        "network": st.dictionaries(st.sampled_from(NETWORK_KEYS), _scalars, max_size=3),
        "listen_transport": _strings,
        "remote_transport": _strings,
        "through": _strings,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_endpoint, min_size=1, max_size=3))
def test_endpoints_only_raise_config_error(endpoints: list[dict[str, Any]]) -> None:
    try:
        assert isinstance(load_documents([("", {"endpoints": endpoints})]), Config)
    except ConfigError as exc:
        assert "\n" not in str(exc)
