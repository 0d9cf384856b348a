"""Perturbed copies of training texts: masked words, short n-grams, no duplicates, reproducible."""

from __future__ import annotations

import pytest

from distill.augment import augmented_texts

TEXTS = ["my card has not arrived yet", "how do i top up by bank transfer", "hi"]


def test_copies_are_masked_or_cut_versions_of_their_text_and_new() -> None:
    copies = augmented_texts(TEXTS, 20, mask_token="[MASK]", seed=1)
    assert copies and len(copies) == len(set(copies))
    assert not set(copies) & set(TEXTS)
    sources = [text.split() for text in TEXTS]
    for copy in copies:
        words = copy.split()
        # every copy is a contiguous run of one text's words, some of them masked
        assert any(
            all(w in ("[MASK]", s) for w, s in zip(words, source[start : start + len(words)], strict=True))
            for source in sources
            for start in range(len(source) - len(words) + 1)
        ), copy
    assert any("[MASK]" in copy for copy in copies)
    assert any(len(copy.split()) < 5 and "[MASK]" not in copy for copy in copies)  # an n-gram kept


def test_the_same_seed_gives_the_same_copies_and_zero_gives_none() -> None:
    assert augmented_texts(TEXTS, 4, mask_token="[MASK]", seed=3) == augmented_texts(
        TEXTS, 4, mask_token="[MASK]", seed=3
    )
    assert augmented_texts(TEXTS, 4, mask_token="[MASK]", seed=3) != augmented_texts(
        TEXTS, 4, mask_token="[MASK]", seed=4
    )
    assert augmented_texts(TEXTS, 0, mask_token="[MASK]") == []
    with pytest.raises(ValueError, match="copies"):
        augmented_texts(TEXTS, -1, mask_token="[MASK]")
