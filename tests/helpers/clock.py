"""A clock that tests move by hand, for code that takes a `clock: Callable[[], float]`.

`FakeClock()` starts at an arbitrary 1000.0 seconds (not 0, so that code subtracting a
past time never sees a negative one); calling it returns the current reading, and
`advance(seconds)` moves it forward. Nothing sleeps: a TTL of an hour "passes" in one
call.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds
