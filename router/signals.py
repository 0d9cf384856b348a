"""Confidence signals: how sure is a model of its top answer?

Each signal maps a batch of logits (shape ``[n, k]``) to one score per row, higher meaning more
confident, so that every signal is used the same way: escalate when ``score < threshold``.
Temperature scaling (Guo et al. 2017) divides the logits by ``T`` before the softmax; ``T > 1``
softens an over-confident model.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


class Signal(StrEnum):
    """The confidence signals a cascade can threshold."""

    MAX_PROB = "max_prob"
    """Top-1 softmax probability, in [1/k, 1]."""
    MARGIN = "margin"
    """Top-1 minus top-2 probability, in [0, 1]."""
    ENTROPY = "entropy"
    """Negative entropy normalised by log(k), shifted into [0, 1]: 1 = one-hot, 0 = uniform."""
    LEARNED = "learned"
    """A learned deferral rule's P(keep) (``router.deferral``): needs the rule's weights, not just probabilities."""


def _as_logits(logits: ArrayLike) -> FloatArray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"logits must have shape [n, k] with k >= 2, got {array.shape}")
    return array


def softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Row-wise softmax of ``logits / temperature``, numerically stable."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = _as_logits(logits) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


def max_prob(probs: FloatArray) -> FloatArray:
    return np.asarray(probs.max(axis=1), dtype=np.float64)


def margin(probs: FloatArray) -> FloatArray:
    top2 = np.sort(probs, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0], dtype=np.float64)


def normalised_negative_entropy(probs: FloatArray) -> FloatArray:
    k = probs.shape[1]
    safe = np.clip(probs, 1e-12, 1.0)
    entropy = -(probs * np.log(safe)).sum(axis=1)
    return np.asarray(1.0 - entropy / np.log(k), dtype=np.float64)


_SIGNALS = {
    Signal.MAX_PROB: max_prob,
    Signal.MARGIN: margin,
    Signal.ENTROPY: normalised_negative_entropy,
}


def confidence(probs: ArrayLike, signal: Signal | str = Signal.MAX_PROB) -> FloatArray:
    """Score each row of ``probs`` with ``signal``; all signals lie in [0, 1]."""
    array = _as_logits(probs)
    chosen = Signal(signal)
    if chosen not in _SIGNALS:
        raise ValueError(f"signal {chosen.value!r} needs a learned rule: use CascadePolicy with rule=")
    return _SIGNALS[chosen](array)


CLOSED_FORM_SIGNALS = tuple(_SIGNALS)
"""The signals computed from probabilities alone."""
