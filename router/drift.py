"""Drift statistics: how far live student confidence has moved from the distribution seen at calibration.

PSI (population stability index) compares two histograms over the same bins:
``sum((live - ref) * ln(live / ref))``. Rules of thumb used by the alert rules: below 0.1 stable,
0.1–0.25 moderate shift (warn), above 0.25 large shift (page). Empty bins are floored at ``epsilon``
so that a bin seen on only one side gives a large but finite contribution.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence

import numpy as np

PSI_EPSILON = 1e-4


def population_stability_index(
    reference_shares: Sequence[float] | np.ndarray,
    live_counts: Sequence[float] | np.ndarray,
    epsilon: float = PSI_EPSILON,
) -> float:
    """PSI of ``live_counts`` (any non-negative counts) against ``reference_shares`` over the same bins."""
    reference = np.asarray(reference_shares, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    if reference.shape != live.shape or reference.ndim != 1 or reference.size == 0:
        raise ValueError(f"bins differ: reference {reference.shape}, live {live.shape}")
    if live.sum() <= 0 or reference.sum() <= 0:
        raise ValueError("both distributions need at least one observation")
    reference = np.maximum(reference / reference.sum(), epsilon)
    live = np.maximum(live / live.sum(), epsilon)
    return float(np.sum((live - reference) * np.log(live / reference)))


class RollingHistogram:
    """Bin counts of the last ``window`` values, updated in O(1) per value (a ring of bin indices)."""

    def __init__(self, edges: Sequence[float], window: int) -> None:
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("edges must be at least two increasing values")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.edges = np.asarray(edges, dtype=np.float64)
        self.window = window
        self.counts = np.zeros(len(edges) - 1, dtype=np.int64)
        self._bins: deque[int] = deque()
        self._inner = self.edges[1:-1].tolist()  # bisect on a list: numpy per value cost the ingress µs a text

    def __len__(self) -> int:
        return len(self._bins)

    def add(self, values: Sequence[float] | np.ndarray) -> None:
        """Add values; values outside the edges count in the first or last bin."""
        for value in np.asarray(values, dtype=np.float64).ravel().tolist():
            index = bisect.bisect_right(self._inner, value)  # as np.searchsorted(side="right"); NaN: last bin
            self._bins.append(index)
            self.counts[index] += 1
            if len(self._bins) > self.window:
                self.counts[self._bins.popleft()] -= 1


__all__ = ["PSI_EPSILON", "RollingHistogram", "population_stability_index"]
