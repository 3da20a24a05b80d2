"""The loader's two outputs besides the `Config`: warnings, and every error at once.

How it works
------------
Warnings: a parser that finds something legal but worth a word (a retired realm key, a
remote no strategy will ever use) calls `warn(place, message)`. The loader runs inside
`collecting()`, which gathers those lines (in a context variable, so the parsers need no
extra argument threaded through every call); outside it `warn` does nothing, which is
what a caller that only wants the values (a test, `explain`'s helpers) gets.

Errors: `Errors` gathers `ConfigError`s from independent parts of a config (each global
section, each endpoint, each route), so one run reports up to `MAX_ERRORS` problems
instead of the first. `with errors.part():` runs one part and keeps its error;
`errors.raise_any()` raises them as one `ConfigErrors`, whose `lines()` are the
one-line messages, in the order found.

Error handling: `part()` swallows only `ConfigError`; once `MAX_ERRORS` are held it
raises them at once (a config that is all wrong is reported in a dozen lines, not a
thousand).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from snirelay.config.model import ConfigError

MAX_ERRORS = 12
_warnings: ContextVar[list[str] | None] = ContextVar("config_warnings", default=None)


def warn(place: str, message: str) -> None:
    """Record a one-line warning for the config being loaded (no-op outside a load)."""
    out = _warnings.get()
    if out is not None:
        line = f"{place}: {message}" if place else message
        if line not in out:  # a range endpoint parses its entry once per port
            out.append(line)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    """Gather the `warn` lines of the code run inside; yields the list they go to."""
    out: list[str] = []
    token = _warnings.set(out)
    try:
        yield out
    finally:
        _warnings.reset(token)


class ConfigErrors(ConfigError):
    """Several config problems; `str()` is the first, `lines()` all of them."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.place, first.message)
        self.errors = errors

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


class Errors:
    """Errors of independent parts of one config (see the module docstring)."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    @contextlib.contextmanager
    def part(self) -> Iterator[None]:
        try:
            yield
        except ConfigErrors as exc:
            self.found.extend(exc.errors)
        except ConfigError as exc:
            self.found.append(exc)
        if len(self.found) >= MAX_ERRORS:
            raise ConfigErrors(self.found[:MAX_ERRORS])  # not caught by another part()

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise ConfigErrors(self.found)


def error_lines(exc: ConfigError) -> list[str]:
    """The one-line messages of a `ConfigError` (one, or each of a `ConfigErrors`)."""
    return exc.lines() if isinstance(exc, ConfigErrors) else [str(exc)]


def within(exc: ConfigError, name: str) -> ConfigError:
    """`exc` (or each error of a `ConfigErrors`) with its place put inside `name`: a
    file's path or "REALM_CONF" ("old.json: listening_ports[2]")."""

    def one(e: ConfigError) -> ConfigError:
        return ConfigError(f"{name}: {e.place}" if e.place else name, e.message)

    if isinstance(exc, ConfigErrors):
        return ConfigErrors([one(e) for e in exc.errors])
    return one(exc)
