"""matplotlib on demand: figures are optional on a serving node (the ``bench`` extra brings matplotlib)."""

from __future__ import annotations

from typing import Any

from serving.errors import CascadeError


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend, or a CascadeError that says what to install."""
    try:
        import matplotlib
    except ImportError:
        raise CascadeError(
            "this command draws a figure and needs matplotlib: pip install 'cascade-gateway[bench]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
