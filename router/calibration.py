"""Temperature scaling (Guo et al. 2017) and expected calibration error.

A single scalar ``T`` divides the logits; it is fitted on a labelled dev set by minimising the
negative log-likelihood. ``T`` changes confidence, never the argmax, so accuracy is untouched.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.typing import ArrayLike

from router.signals import softmax

_T_MIN, _T_MAX = 0.05, 20.0


def negative_log_likelihood(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    probs = softmax(logits, temperature)
    rows = np.arange(probs.shape[0])
    return float(-np.mean(np.log(np.clip(probs[rows, np.asarray(labels)], 1e-12, 1.0))))


def fit_temperature(logits: ArrayLike, labels: ArrayLike, *, tolerance: float = 1e-4) -> float:
    """The ``T`` in [0.05, 20] that minimises dev NLL (golden-section search on log T; NLL is unimodal there)."""
    array, gold = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if array.shape[0] != gold.shape[0] or array.shape[0] == 0:
        raise ValueError(f"need as many labels as logit rows (> 0), got {gold.shape[0]} and {array.shape[0]}")
    low, high = math.log(_T_MIN), math.log(_T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = (negative_log_likelihood(array, gold, math.exp(x)) for x in (a, b))
    while high - low > tolerance:
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = negative_log_likelihood(array, gold, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = negative_log_likelihood(array, gold, math.exp(b))
    return math.exp((low + high) / 2)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> float:
    """ECE: the mean |accuracy − confidence| over equal-width confidence bins, weighted by bin size."""
    array, gold = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = array.max(axis=1)
    correct = array.argmax(axis=1) == gold
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)
