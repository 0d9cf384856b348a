"""The shared vocabulary: model roles, request routes, and why the teacher ran on a text.

One definition of each word, imported by the HTTP schemas, the cascade, the metrics, the traffic log
and the registry, so that a response, a metric label and a log row say the same thing the same way.

    route (what the client asked)     auto | student | teacher
    role (a model in the chain)       student | middle | teacher   (middle: optional, see below)
    served_by (who answered a text)   a role
    reason (why the teacher ran)      escalation   the student was unsure (route auto)
                                      forced       the client asked for the teacher (route teacher)
                                      shadow       a sampled student answer, checked off the latency path
    log reason                        the three above, or sampled (logged; the teacher did not run)
    path (an HTTP request's latency)  student | escalation | forced
    failure (why a role did not answer) timeout | unavailable | overloaded | error | budget
    degraded reason                   <role>_<failure>: who could not answer, e.g. teacher_timeout
                                      (a failed middle model: the teacher answers its texts)

A chain of three (``middle`` configured): the student judges every text, the middle model the texts
the student escalated, the teacher those the middle model escalated. ``escalation`` then means the
text went past the student, whoever answered it.
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["student", "middle", "teacher"]
ROLES: tuple[Role, ...] = get_args(Role)
"""Every role a gateway may serve, in chain order; ``middle`` only when the config names one."""
REQUIRED_ROLES: tuple[Role, ...] = ("student", "teacher")

Route = Literal["auto", "student", "teacher"]
ROUTES: tuple[Route, ...] = ("auto", "student", "teacher")

TeacherReason = Literal["escalation", "forced", "shadow"]
LogReason = Literal["escalation", "forced", "shadow", "sampled"]
LOG_REASONS: tuple[LogReason, ...] = ("escalation", "forced", "shadow", "sampled")

RequestPath = Literal["student", "escalation", "forced"]
REQUEST_PATHS: tuple[RequestPath, ...] = ("student", "escalation", "forced")

ShadowOutcome = Literal["agree", "disagree", "dropped", "failed"]
SHADOW_OUTCOMES: tuple[ShadowOutcome, ...] = ("agree", "disagree", "dropped", "failed")

Failure = Literal["timeout", "unavailable", "overloaded", "error", "budget"]
FAILURES: tuple[Failure, ...] = ("timeout", "unavailable", "overloaded", "error", "budget")
"""``budget``: the API key's teacher budget is spent (the teacher was not asked)."""

DegradedReason = Literal[
    "teacher_timeout",
    "teacher_unavailable",
    "teacher_overloaded",
    "teacher_error",
    "teacher_budget",
    "student_timeout",
    "student_unavailable",
    "student_overloaded",
    "student_error",
    "middle_timeout",
    "middle_unavailable",
    "middle_overloaded",
    "middle_error",
]
DEGRADED_REASONS: tuple[DegradedReason, ...] = get_args(DegradedReason)

REGISTRY_PREFIX = "registry:"
"""A config's ``model: registry:<root>/<role>`` names the version currently promoted for that role."""


def request_path(route: Route, escalated_any: bool) -> RequestPath:
    """The latency path of one HTTP request: forced to the teacher, escalated in part, or student only."""
    if route == "teacher":
        return "forced"
    return "escalation" if escalated_any else "student"


def teacher_reason(route: Route) -> TeacherReason:
    """Why the teacher answered a text of a request on ``route`` (never ``shadow``: that is off the path)."""
    return "forced" if route == "teacher" else "escalation"
