"""How far below the teacher a cascade may really be, from a finite calibration set.

The cascade and the teacher answer the same texts, so their accuracies are paired: the gap is
``(k_worse − k_better) / n`` where ``k_worse`` counts texts the teacher gets right and the cascade wrong,
``k_better`` the reverse. Choosing a threshold on that point estimate keeps the promise only half the
time on new traffic; ``paired_gap_upper_bound`` is the one-sided upper confidence bound that
``cascade calibrate`` chooses on instead.

The bound is the Agresti–Min interval for a difference of paired proportions (half a pseudo-count added
to each discordant cell, then the Wald interval): it stays informative when there are no discordant
texts at all, where the plain Wald interval would claim certainty (Agresti & Min, Statistics in
Medicine 2005). A cascade that escalates every text *is* the teacher, and its bound is exactly 0.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray


def one_sided_z(confidence: float) -> float:
    """The normal quantile for a one-sided bound at ``confidence`` (0.5 gives 0: the point estimate)."""
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def paired_gap_upper_bound(
    k_worse: ArrayLike, k_better: ArrayLike, n: int, confidence: float, *, kept: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Upper bound (share, not points) of teacher accuracy − cascade accuracy, at one-sided ``confidence``.

    Vectorised over candidate thresholds. ``kept``: texts the cascade did not send to the teacher; where
    it is 0 the cascade is the teacher and the bound is 0.
    """
    if n <= 0:
        raise ValueError("n must be > 0")
    z = one_sided_z(confidence)
    worse = np.asarray(k_worse, dtype=np.float64) + 0.5
    better = np.asarray(k_better, dtype=np.float64) + 0.5
    total = n + 2.0  # half a text added to each of the four cells
    difference = (worse - better) / total
    variance = np.maximum((worse + better) / total - difference**2, 0.0) / total
    bound = difference + z * np.sqrt(variance)
    if kept is not None:
        bound = np.where(np.asarray(kept) > 0, bound, 0.0)
    return np.asarray(bound, dtype=np.float64)
