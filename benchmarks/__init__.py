"""Measurement code that builds models and drives gateways to produce ``docs/benchmarks/*``.

Never imported by the runtime (``serving``, ``router``, ``distill``); its extra dependencies
(Locust, matplotlib) come with ``pip install -e .[bench]``.
"""
