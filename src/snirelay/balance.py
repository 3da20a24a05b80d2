"""Choosing a remote: weighted round robin, consistent IP hashing, and failover state.

Pure: no I/O, no clock (the caller passes `now`, e.g. `loop.time()`), no logging. One
`Balancer` per upstream (endpoint or route), owned by one event loop; not thread-safe.

How it works
------------
`order(client_ip, now)` returns the indices of the remotes to try for one connection,
best first. The caller connects to them in turn, reporting `failed(i, now)` for a
refused or timed-out connect and `succeeded(i)` for one that worked.

- **roundrobin**: nginx's smooth weighted round robin. Every eligible remote's
  `current` grows by its weight, the largest `current` is picked (lowest index on a
  tie) and loses the eligible total. Over any run of `sum(weights)` picks each remote
  is chosen exactly `weight` times, interleaved (weights 5,1,1 give a a b a c a a).
  The failover tail is the other eligible remotes by descending `current`, then index.
- **iphash**: consistent hashing of the client IP. Each remote owns
  `POINTS_PER_WEIGHT * weight` points on a 64-bit ring (blake2b of "index-replica",
  stable across runs and processes, unlike `hash()`); the client IP is hashed onto the
  ring and the ring is walked clockwise, collecting distinct remotes. The same IP gets
  the same order every time, and removing or adding a remote moves only its share.
  Walks are cached per ring position (bounded by the ring size).
- **failover** (nginx's `max_fails` / `fail_timeout`): `max_fails` failures within
  `fail_timeout` seconds leave a remote out for `fail_timeout` seconds. When it comes
  back it is on probation: one failure puts it out again, one success clears it (a
  success also brings back a remote that is out, e.g. tried because all were out).
  `fail_timeout <= 0` or `max_fails <= 0` means never left out. Remotes that are out
  are dropped from `order`, unless all are out, in which case all are returned in the
  normal order (trying is better than refusing the client).

The remotes in use are the first ``len(balance.weights)`` (at least one; realm's rule:
as many remotes as weights, and one for "off"); `order` only returns those. `failed`,
`succeeded` and `is_down` take any index below `count`: a pre-connect hook may pick a
remote the strategy does not use.

Error handling: the constructor raises ValueError for an unknown strategy or a weight
below 1. Surplus weights (more than `count`) are ignored.
"""

from __future__ import annotations

import bisect

from snirelay.config.model import Balance

__all__ = ["POINTS_PER_WEIGHT", "Balancer"]

POINTS_PER_WEIGHT = 400
_MAX_RING_POINTS = 1 << 16


def _hash64(data: bytes) -> int:
    import hashlib  # only iphash needs it; importing it costs ~0.6 MB per process

    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Balancer:
    """The choice of remote for one upstream of `count` remotes."""

    __slots__ = (
        "_all",
        "_any_down",
        "_count",
        "_current",
        "_down_until",
        "_fail_timeout",
        "_fails",
        "_iphash",
        "_max_fails",
        "_probation",
        "_ring_hashes",
        "_ring_owner",
        "_walk_cache",
        "_weights",
        "_window_start",
    )

    def __init__(
        self, balance: Balance, count: int, *, max_fails: int, fail_timeout: float
    ) -> None:
        if balance.strategy not in ("off", "roundrobin", "iphash"):
            raise ValueError(
                f"unknown strategy {balance.strategy!r} (expected off, roundrobin, iphash)"
            )
        if count < 0:
            raise ValueError(f"remote count must be >= 0, got {count}")
        weights = [1] if balance.strategy == "off" else list(balance.weights[:count])
        weights = (weights[:count] or [1]) if count else []
        for w in weights:
            if w < 1:
                raise ValueError(f"weights must be >= 1, got {w}")
        used = len(weights)  # the remotes in use; state is kept for all `count`
        self._count = used
        self._weights = weights
        self._all = list(range(used))
        self._iphash = balance.strategy == "iphash"
        self._max_fails = max_fails
        self._fail_timeout = float(fail_timeout)
        size = max(count, used)
        self._current = [0] * size
        self._fails = [0] * size
        self._window_start = [0.0] * size
        self._down_until = [float("-inf")] * size
        self._probation = [False] * size
        self._any_down = False
        self._ring_hashes: list[int] = []
        self._ring_owner: list[int] = []
        self._walk_cache: dict[int, tuple[int, ...]] = {}
        if self._iphash and used > 1:
            self._build_ring()

    # --- choosing -------------------------------------------------------------------

    def order(self, client_ip: str, now: float) -> list[int]:
        """Indices of the remotes to try for one connection, best first."""
        count = self._count
        if count <= 1:
            return self._all[:]
        if self._any_down:
            eligible = [i for i in self._all if now >= self._down_until[i]]
            if len(eligible) == count:
                self._any_down = False
            elif not eligible:
                eligible = self._all
        else:
            eligible = self._all
        if self._iphash:
            walk = self._walk(client_ip)
            if eligible is self._all:
                return list(walk)
            allowed = set(eligible)
            return [i for i in walk if i in allowed]
        return self._round_robin(eligible)

    def _round_robin(self, eligible: list[int]) -> list[int]:
        current = self._current
        weights = self._weights
        total = 0
        best = -1
        for i in eligible:
            w = weights[i]
            total += w
            current[i] += w
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        rest = [i for i in eligible if i != best]
        rest.sort(key=lambda i: -current[i])  # stable: ties keep index order
        return [best, *rest]

    def _build_ring(self) -> None:
        per = max(1, min(POINTS_PER_WEIGHT, _MAX_RING_POINTS // sum(self._weights)))
        points = sorted(
            (_hash64(f"{i}-{r}".encode()), i)
            for i, w in enumerate(self._weights)
            for r in range(per * w)
        )
        self._ring_hashes = [h for h, _ in points]
        self._ring_owner = [i for _, i in points]

    def _walk(self, client_ip: str) -> tuple[int, ...]:
        hashes = self._ring_hashes
        start = bisect.bisect_left(hashes, _hash64(client_ip.encode()))
        if start == len(hashes):
            start = 0
        cached = self._walk_cache.get(start)
        if cached is not None:
            return cached
        owners = self._ring_owner
        size = len(owners)
        seen: dict[int, None] = {}
        pos = start
        for _ in range(size):
            seen.setdefault(owners[pos], None)
            if len(seen) == self._count:
                break
            pos += 1
            if pos == size:
                pos = 0
        walk = tuple(seen)
        self._walk_cache[start] = walk
        return walk

    # --- failover state -------------------------------------------------------------

    def failed(self, index: int, now: float) -> None:
        """A connect to remote `index` was refused or timed out."""
        timeout = self._fail_timeout
        if timeout <= 0 or self._max_fails <= 0:
            return
        if self._probation[index] or now < self._down_until[index]:
            # still out (an attempt made when every remote was out), or back on
            # probation: one failure is enough
            self._down_until[index] = now + timeout
            self._any_down = True
            return
        if now - self._window_start[index] > timeout or self._fails[index] == 0:
            self._fails[index] = 0
            self._window_start[index] = now
        self._fails[index] += 1
        if self._fails[index] >= self._max_fails:
            self._fails[index] = 0
            self._down_until[index] = now + timeout
            self._probation[index] = True
            self._any_down = True

    def succeeded(self, index: int) -> None:
        """A connect to remote `index` worked: forget its failures."""
        self._fails[index] = 0
        self._probation[index] = False
        self._down_until[index] = float("-inf")

    def is_down(self, index: int, now: float) -> bool:
        """Is remote `index` currently left out? (For metrics and the admin API.)"""
        return now < self._down_until[index]

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(self._weights)
