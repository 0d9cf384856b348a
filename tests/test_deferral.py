"""The promise on new data: the quality-loss bound, the learned deferral rule, chains of students."""

from __future__ import annotations

import numpy as np
import pytest

from router import CascadePolicy, Signal
from router.bounds import paired_gap_upper_bound
from router.chain import (
    ChainOutcomes,
    _two_student_grid,
    chain_oracle_at,
    choose_chain,
    evaluate,
    share_of_chain_oracle_savings,
)
from router.cost import CostModel
from router.deferral import (
    BASE_FEATURES,
    CHAIN_FEATURES,
    DeferralRule,
    DeferralTarget,
    cross_fitted_rule,
    deferral_features,
    fit_deferral_rule,
    keep_labels,
)
from router.tradeoff import Outcomes, choose_threshold


def test_the_bound_covers_the_true_gap_at_its_confidence() -> None:
    """Draw many calibration sets from a known population: the 90% bound is at or above the truth ≥ 90%."""
    rng = np.random.default_rng(0)
    n, p_worse, p_better = 500, 0.02, 0.012
    draws = rng.multinomial(n, [p_worse, p_better, 1 - p_worse - p_better], size=4000)
    bounds = paired_gap_upper_bound(draws[:, 0], draws[:, 1], n, 0.9)
    covered = float(np.mean(bounds >= p_worse - p_better))
    assert 0.88 <= covered <= 0.97
    point_estimate = (draws[:, 0] - draws[:, 1]) / n
    assert float(np.mean(point_estimate >= p_worse - p_better)) < 0.6  # the point estimate: about half


def test_the_bound_is_zero_for_the_teacher_alone_and_shrinks_with_data() -> None:
    assert paired_gap_upper_bound(0, 0, 300, 0.9, kept=0) == 0.0
    assert paired_gap_upper_bound(0, 0, 300, 0.9, kept=10) > 0  # no discordance seen is not certainty
    small, large = paired_gap_upper_bound(4, 2, 200, 0.9), paired_gap_upper_bound(40, 20, 2000, 0.9)
    assert small > large > (40 - 20) / 2000
    with pytest.raises(ValueError, match="confidence"):
        paired_gap_upper_bound(1, 1, 10, 1.0)


def test_choosing_on_the_bound_costs_more_and_keeps_the_bound_within_target() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.random(600)
    student, teacher = rng.random(600) < 0.6 + 0.4 * confidence, rng.random(600) < 0.93
    outcomes, cost = Outcomes.from_arrays(confidence, student, teacher), CostModel(0.001, 0.01)
    point_estimate = choose_threshold(outcomes, cost, "max_quality_loss", 1.0)
    bounded = choose_threshold(outcomes, cost, "max_quality_loss", 1.0, confidence=0.9)
    assert bounded.quality_loss_bound <= 0.01 + 1e-12
    assert bounded.escalation_rate >= point_estimate.escalation_rate


def _length_predicts_errors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The student is wrong on long texts whatever its max-probability says: only length tells."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4) * 0.3, size=n)
    lengths = rng.integers(5, 200, size=n).astype(float)
    student_right = rng.random(n) < np.where(lengths > 150, 0.2, 0.97)
    return probs, lengths, student_right


def test_a_learned_rule_finds_what_max_probability_cannot() -> None:
    probs, lengths, student_right = _length_predicts_errors(2000, 0)
    features = deferral_features(probs, lengths)
    keep = keep_labels(student_right, np.ones_like(student_right), DeferralTarget.TEACHER_BETTER)
    rule = fit_deferral_rule(features, keep, BASE_FEATURES)
    test_probs, test_lengths, test_right = _length_predicts_errors(2000, 1)
    scores = rule.score(deferral_features(test_probs, test_lengths))
    escalate_learned = scores < np.quantile(scores, 0.25)
    escalate_max_prob = test_probs.max(axis=1) < np.quantile(test_probs.max(axis=1), 0.25)
    errors = ~test_right
    assert errors[escalate_learned].mean() > 0.6 > 2 * errors[escalate_max_prob].mean()


def test_cross_fitting_scores_each_text_by_a_rule_that_did_not_see_it() -> None:
    probs, lengths, student_right = _length_predicts_errors(400, 2)
    features = deferral_features(probs, lengths)
    rule, out_of_fold = cross_fitted_rule(features, student_right.astype(float), BASE_FEATURES, seed=0)
    in_sample = rule.score(features)
    assert out_of_fold.shape == (400,) and not np.allclose(out_of_fold, in_sample)
    assert np.corrcoef(out_of_fold, in_sample)[0, 1] > 0.95  # the mean rule behaves like its folds
    with pytest.raises(ValueError, match="folds"):
        cross_fitted_rule(features[:6], student_right[:6].astype(float), BASE_FEATURES)


def test_one_class_gives_a_constant_rule_and_bad_rules_are_refused() -> None:
    features = deferral_features(np.full((10, 3), 1 / 3), np.arange(10.0))
    rule = fit_deferral_rule(features, np.ones(10), BASE_FEATURES)
    assert np.ptp(rule.score(features)) == 0.0 and rule.score(features)[0] > 0.99
    with pytest.raises(ValueError, match="unknown features"):
        DeferralRule(("colour",), (0.0,), (1.0,), (1.0,), 0.0)
    with pytest.raises(ValueError, match="same length"):
        DeferralRule(BASE_FEATURES, (0.0,), (1.0,), (1.0,), 0.0)


def test_the_policy_serves_a_learned_rule_and_reports_max_prob_for_the_teacher() -> None:
    probs, lengths, student_right = _length_predicts_errors(500, 3)
    rule = fit_deferral_rule(deferral_features(probs, lengths), student_right.astype(float), BASE_FEATURES)
    policy = CascadePolicy(0.5, Signal.LEARNED, 1.0, rule)
    verdict = policy.judge(np.log(probs), lengths)
    assert np.array_equal(verdict.escalate, rule.score(deferral_features(verdict.probabilities, lengths)) < 0.5)
    assert policy.for_teacher(2.0).signal is Signal.MAX_PROB
    with pytest.raises(ValueError, match="lengths"):
        policy.judge(np.log(probs))
    with pytest.raises(ValueError, match="needs a rule"):
        CascadePolicy(0.5, Signal.LEARNED)
    chained = DeferralRule(BASE_FEATURES + CHAIN_FEATURES, (0.0,) * 7, (1.0,) * 7, (0.0,) * 7, 0.0)
    with pytest.raises(ValueError, match="chain"):
        CascadePolicy(0.5, Signal.LEARNED, 1.0, chained)


def _chain(n: int = 300, seed: int = 1) -> ChainOutcomes:
    rng = np.random.default_rng(seed)
    s1, s2 = rng.random(n), rng.random(n)
    c1, c2, ct = rng.random(n) < 0.5 + 0.5 * s1, rng.random(n) < 0.6 + 0.4 * s2, rng.random(n) < 0.9
    return ChainOutcomes.from_arrays([s1, s2], [c1, c2, ct], [0.001, 0.01, 0.05])


def test_the_two_stage_grid_equals_evaluating_each_pair_of_thresholds() -> None:
    outcomes = _chain()
    points = _two_student_grid(outcomes, 0.9)
    for index in np.random.default_rng(0).integers(0, len(points), size=30):
        grid_point = points[int(index)]
        direct = evaluate(outcomes, grid_point.thresholds, confidence=0.9)
        assert direct.quality == pytest.approx(grid_point.quality)
        assert direct.dollars_per_1000 == pytest.approx(grid_point.dollars_per_1000)
        assert direct.quality_loss_bound == pytest.approx(grid_point.quality_loss_bound)
        assert direct.served_share == pytest.approx(grid_point.served_share)


def test_no_chain_beats_its_oracle_and_the_chosen_one_meets_its_bound() -> None:
    outcomes = _chain()
    for point in _two_student_grid(outcomes, None)[::97]:
        assert chain_oracle_at(outcomes, point.quality) <= point.dollars_per_1000 + 1e-9
        assert share_of_chain_oracle_savings(outcomes, point) <= 1 + 1e-9
    chosen = choose_chain(outcomes, 1.0, confidence=0.9)
    assert chosen.quality_loss_bound <= 0.01 + 1e-12
    assert chosen.dollars_per_1000 <= 1000 * 0.05 * 1.0 + 1000 * (0.001 + 0.01)  # never worse than all stages


def test_nearly_collinear_features_do_not_derail_the_fit() -> None:
    """Peaked probabilities make max-prob, margin and entropy move together; the fit must still rank
    errors as well as max-prob does (plain Newton steps diverged here, as on real CLINC150 outputs)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (1500, 150))
    logits[:, 0] += rng.gamma(2.0, 8.0, 1500)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    right = rng.random(1500) < probs.max(axis=1) ** 0.3
    features = deferral_features(probs, rng.integers(5, 100, 1500).astype(float))
    rule, out_of_fold = cross_fitted_rule(features, right.astype(float), BASE_FEATURES, target="student_wrong")

    def auc(score: np.ndarray) -> float:
        wrong, good = score[~right], score[right]
        return float((wrong[:, None] < good[None, :]).mean())

    assert auc(out_of_fold) >= auc(probs.max(axis=1)) - 0.02
    assert max(abs(w) for w in rule.weights) < 20  # no runaway weights
