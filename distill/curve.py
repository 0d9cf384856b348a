"""The cost–quality curve of one scoring of the student, against the oracle, as JSON and a PNG."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from distill.predictions import Predictions
from router.cost import CostModel
from router.tradeoff import oracle_curve, reference_points, summary, sweep
from serving.plotting import pyplot


def curve(
    predictions: Predictions,
    scores: np.ndarray,
    *,
    label: str,
    cost: CostModel,
    chosen_threshold: float | None = None,
) -> dict[str, Any]:
    """Every threshold over ``scores`` (the rule's confidence per text, ``label`` names the rule)."""
    outcomes = predictions.outcomes(scores)
    points = sweep(outcomes, cost)
    chosen = outcomes.at(chosen_threshold, cost) if chosen_threshold is not None else None
    result: dict[str, Any] = {
        "quality_measure": "accuracy" if predictions.gold is not None else "agreement_with_teacher",
        "signal": label,
        "points": [p.as_dict() for p in points],
        "oracle_points": [p.as_dict() for p in oracle_curve(outcomes, cost)],
        **reference_points(outcomes, cost),
    }
    if chosen is not None:
        result["chosen"] = summary(outcomes, cost, chosen)
    if predictions.gold is not None:  # agreement curve alongside accuracy
        agreement = dataclasses.replace(predictions, gold=None).outcomes(scores)
        result["agreement_points"] = [p.as_dict() for p in sweep(agreement, cost)]
    return result


def plot_curve(result: dict[str, Any], path: Path, title: str) -> None:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    curves = [
        ("points", f"cascade ({result['quality_measure']})", {}),
        ("agreement_points", "cascade (agreement with teacher)", {"linestyle": "--"}),
        # the cheapest routing at each accuracy, knowing every answer
        ("oracle_points", "oracle (cheapest at each accuracy)", {"linestyle": ":", "color": "grey"}),
    ]
    for key, label, style in curves:
        if key in result:
            points = result[key]
            axis.plot([p["dollars_per_1000"] for p in points], [p["quality"] for p in points], label=label, **style)
    references = [("teacher only", result["teacher_only"], "s"), ("student only", result["student_only"], "o")]
    references.append(("oracle", result["oracle"], "*"))
    if "chosen" in result:
        chosen = result["chosen"]
        references.append(("random, same escalation", chosen["random_at_same_escalation"], "x"))
        references.append(("chosen τ", chosen["chosen"], "D"))
    for name, point, marker in references:
        axis.scatter([point["dollars_per_1000"]], [point["quality"]], marker=marker, s=60, label=name, zorder=3)
    axis.set_xlabel("dollars per 1,000 requests")
    axis.set_ylabel(result["quality_measure"])
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
