"""Typed, place-aware reading of one TOML/JSON table.

How it works
------------
`Table(data, place, allowed)` checks that `data` is a table and that every key is one
of `allowed` (unknown keys get a difflib hint: "endpoints[0].lisen: unknown key (did
you mean 'listen'?)"). The getters return the value with its type checked, or None when
the key is absent, so callers apply their own defaults and precedence. Every error names
the full place of the key and the type that was expected.

`display` renames keys in error places (the command line uses it so that an error says
"-r/--remote: ..." instead of a config key).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from snirelay.config.model import ConfigError


def type_name(value: object) -> str:
    """The TOML-ish name of a value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    return type(value).__name__


def join(place: str, key: str) -> str:
    return f"{place}.{key}" if place else key


def unknown_key(place: str, key: str, allowed: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(join(place, key), f"unknown key{hint}")


class Table:
    """One table of the config with its place; see the module docstring."""

    __slots__ = ("data", "place", "display")

    def __init__(
        self,
        data: object,
        place: str,
        allowed: Iterable[str],
        display: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(data, dict):
            raise ConfigError(place, f"expected a table, got {type_name(data)}")
        allowed = tuple(allowed)
        for key in data:
            if key not in allowed:
                raise unknown_key(place, str(key), allowed)
        self.data: dict[str, Any] = data
        self.place = place
        self.display = dict(display or {})

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def place_of(self, key: str) -> str:
        return self.display.get(key) or join(self.place, key)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.place_of(key), message)

    def _typed(self, key: str, check: type | tuple[type, ...], expected: str) -> Any:
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, bool) and bool not in (
            check if isinstance(check, tuple) else (check,)
        ):
            raise self.error(key, f"expected {expected}, got {type_name(value)}")
        if not isinstance(value, check):
            raise self.error(key, f"expected {expected}, got {type_name(value)}")
        return value

    def text(self, key: str, *, nonempty: bool = True) -> str | None:
        value: str | None = self._typed(key, str, "a string")
        if value is not None and nonempty and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def flag(self, key: str) -> bool | None:
        value: bool | None = self._typed(key, bool, "a boolean (true or false)")
        return value

    def integer(self, key: str, minimum: int = 0, maximum: int | None = None) -> int | None:
        value: int | None = self._typed(key, int, "an integer")
        if value is not None:
            check_range(self.place_of(key), value, minimum, maximum)
        return value

    def seconds(self, key: str, *, positive: bool = False) -> float | None:
        """A non-negative number of seconds (integer or float); `positive` forbids 0."""
        value: float | int | None = self._typed(key, (int, float), "a number of seconds")
        if value is None:
            return None
        check_seconds(self.place_of(key), value, positive=positive)
        return float(value)

    def strings(self, key: str) -> list[str] | None:
        value: list[Any] | None = self._typed(key, list, "an array of strings")
        if value is None:
            return None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{self.place_of(key)}[{i}]", f"expected a string, got {type_name(item)}"
                )
        return value

    def table(self, key: str, allowed: Iterable[str]) -> Table | None:
        if key not in self.data:
            return None
        return Table(self.data[key], self.place_of(key), allowed)

    def tables(self, key: str) -> list[Any] | None:
        value: list[Any] | None = self._typed(key, list, "an array of tables")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is None:
            return None
        return check_choice(self.place_of(key), value, choices)


def check_range(place: str, value: int, minimum: int, maximum: int | None = None) -> None:
    if value < minimum:
        raise ConfigError(place, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(place, f"must be <= {maximum}, got {value}")


MAX_SECONDS = 10**9  # about 31 years: more is a typo, and no timer needs it


def check_seconds(place: str, value: float, *, positive: bool = False) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(place, f"expected a finite number of seconds, got {value}")
    if value > MAX_SECONDS:
        raise ConfigError(place, f"must be <= {MAX_SECONDS} seconds, got {value:g}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(place, f"must be {'> 0' if positive else '>= 0'}, got {value}")


def check_choice(place: str, value: str, choices: tuple[str, ...]) -> str:
    norm = value.strip().lower()
    if norm not in choices:
        close = difflib.get_close_matches(norm, list(choices), n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        raise ConfigError(place, f"unknown value {value!r} (expected {', '.join(choices)}{hint})")
    return norm
