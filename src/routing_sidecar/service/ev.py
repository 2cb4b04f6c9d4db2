"""A sliding window of recent task EVs whose percentile gates reserved tiers."""

from __future__ import annotations

import bisect
from collections import deque

from routing_sidecar.domain import TierRules


class EvWindow:
    """Recent EVs kept both in arrival order (to evict) and sorted (for O(1) percentiles)."""

    def __init__(self, size: int, percentile: float, min_samples: int) -> None:
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        self._size = size
        self._pct = percentile
        self._min = min_samples

    @classmethod
    def of(cls, tiers: TierRules) -> EvWindow:
        """An empty window with the tier settings' size, percentile and minimum history."""
        return cls(tiers.ev_window, tiers.ev_percentile, tiers.ev_min_samples)

    def resized(self, tiers: TierRules) -> EvWindow:
        """A window with new settings holding the most recent of this window's EVs."""
        window = EvWindow.of(tiers)
        for ev in list(self._order)[-tiers.ev_window:]:
            window.add(ev)
        return window

    def __len__(self) -> int:
        return len(self._order)

    def threshold(self) -> float | None:
        """The configured percentile of the window, or None while history is too thin."""
        n = len(self._sorted)
        if n < self._min or n == 0:
            return None
        rank = (n - 1) * self._pct / 100.0
        lo = int(rank)
        hi = min(lo + 1, n - 1)
        return self._sorted[lo] + (self._sorted[hi] - self._sorted[lo]) * (rank - lo)

    def add(self, ev: float) -> None:
        """Record one task's EV, evicting the oldest once the window is full."""
        if len(self._order) == self._size:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(ev)
        bisect.insort(self._sorted, ev)
