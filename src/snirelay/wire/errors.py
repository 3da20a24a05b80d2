"""The two non-value outcomes every wire parser shares.

A parser in `snirelay.wire` looks at the bytes buffered so far and does exactly one of:

- returns its value (the input held a complete message);
- returns `NeedData(at_least)`: the input is a proper prefix of something that may
  still be valid; try again once at least `at_least` bytes in total are buffered;
- raises `ProtocolError(kind, message)`: the input can never become valid.

`kind` lets the relay choose what to do without parsing messages:
"not-tls" (not the protocol at all: route as `not_tls`), "malformed" (claims to be
the protocol but breaks its rules) or "too-large" (over the caller's size cap).
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR_KINDS = ("not-tls", "malformed", "too-large")


class ProtocolError(ValueError):
    """The one error a wire parser raises. `str()` is "<kind>: <message>".

    `kind` is one of ERROR_KINDS (not checked here, so a caller building one for its
    own reasons can never crash a connection).
    """

    kind: str

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class NeedData:
    """More input is needed: retry once `at_least` bytes in total are buffered.

    `at_least` is always greater than the length of the input that produced it, and
    never more than the bytes actually needed, so a caller can read up to it safely.
    """

    at_least: int
