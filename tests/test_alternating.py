"""The alternating-pairs harness's plumbing: variants from the command line, CPU between two readings."""

from __future__ import annotations

import pytest

from benchmarks.alternating import Variant, parse_variant
from benchmarks.profile_path import cpu_spent


def test_a_variant_is_a_name_and_its_environment() -> None:
    assert parse_variant("baseline") == Variant("baseline", {})
    assert parse_variant("one thread:RAY_SERVE_HAPROXY_NBTHREAD=1, X=a=b") == Variant(
        "one thread", {"RAY_SERVE_HAPROXY_NBTHREAD": "1", "X": "a=b"}
    )


@pytest.mark.parametrize("text", ["x:NOEQUALS", "x:=1", ":A=1", "  "])
def test_a_malformed_variant_is_refused_with_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="variant"):
        parse_variant(text)


def test_cpu_spent_sums_by_name_and_counts_a_new_process_whole() -> None:
    before = {1: ("haproxy", 1.0), 2: ("haproxy", 2.0), 3: ("raylet", 5.0)}
    after = {1: ("haproxy", 1.5), 2: ("haproxy", 2.25), 3: ("raylet", 5.0), 4: ("ray::Worker", 0.5)}
    assert cpu_spent(before, after) == {"haproxy": 0.75, "raylet": 0.0, "ray::Worker": 0.5}
