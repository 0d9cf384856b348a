"""Perturbed copies of training texts, for the teacher to label and a small student to imitate.

A cheap student matches its teacher better the more of the input space it sees the teacher's answers
on. Where no unlabelled texts of the domain are at hand, Tang et al. (2019, "Distilling task-specific
knowledge from BERT into simple neural networks") make them from the training texts: each word is
masked with a small probability, and some copies keep only a short n-gram of the text. The copies
carry no gold label: the teacher's soft answer on each is the target, uncertain where the copy lost
what decided the class, which is what the student should learn to be unsure about.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

MASK_SHARE = 0.1
"""Each word of a copy becomes the mask token with this probability."""
NGRAM_SHARE = 0.25
"""A copy keeps only a random n-gram of its text (n from 1 to ``MAX_NGRAM``) with this probability."""
MAX_NGRAM = 5


def augmented_texts(
    texts: Sequence[str],
    copies: int,
    *,
    mask_token: str,
    seed: int = 0,
    mask_share: float = MASK_SHARE,
    ngram_share: float = NGRAM_SHARE,
) -> list[str]:
    """Up to ``copies`` perturbed copies of each text, none equal to a training text or to another copy.

    Deterministic for a given ``seed``. A copy that came out unchanged (a short text, no word drawn)
    is dropped rather than counted twice.
    """
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    if not (0.0 <= mask_share <= 1.0 and 0.0 <= ngram_share <= 1.0):
        raise ValueError(f"mask_share and ngram_share must be in [0, 1], got {mask_share} and {ngram_share}")
    generator = random.Random(seed)
    seen = set(texts)
    made: list[str] = []
    for text in texts:
        words = text.split()
        if not words:
            continue
        for _ in range(copies):
            copy = _perturbed(words, generator, mask_token, mask_share, ngram_share)
            if copy not in seen:
                seen.add(copy)
                made.append(copy)
    return made


def _perturbed(
    words: list[str], generator: random.Random, mask_token: str, mask_share: float, ngram_share: float
) -> str:
    kept = [mask_token if generator.random() < mask_share else word for word in words]
    if generator.random() < ngram_share:
        length = generator.randint(1, min(MAX_NGRAM, len(kept)))
        start = generator.randint(0, len(kept) - length)
        kept = kept[start : start + length]
    return " ".join(kept)
