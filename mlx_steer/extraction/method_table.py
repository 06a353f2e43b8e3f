"""The extraction methods by name: the one table :func:`mlx_steer.extract` and the CLI share.

A method is a function ``(pos (N, D), neg (M, D)) -> (D,)`` of recorded activations; the names
below are aliases for the built-in ones, and ``extract(method=...)`` also takes any such function.
This module imports nothing at import time (numpy and :mod:`mlx_steer.extraction.methods` load on the first
call), so the CLI can list the names without paying for numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Method = Callable[[Any, Any], Any]


def mean_diff(pos: Any, neg: Any) -> Any:
    """``mean(pos) - mean(neg)`` (CAA)."""
    from .methods import mean_difference

    return mean_difference(pos, neg)


def pca(pos: Any, neg: Any) -> Any:
    """First principal direction of the paired differences, signed toward positive (repeng)."""
    from .methods import pca_direction

    return pca_direction(pos, neg)


def probe(pos: Any, neg: Any) -> Any:
    """Unit direction of a logistic-regression probe separating positive from negative."""
    from .methods import logistic_probe

    return logistic_probe(pos, neg).direction


def actadd(pos: Any, neg: Any) -> Any:
    """ActAdd: per-position difference of ONE prompt pair, ``(L, D), (L, D) -> (L, D)``.

    Unlike the others it reads every position of the pair, not one row per prompt; ``extract``
    recognises it by identity.
    """
    from .methods import actadd_difference

    return actadd_difference(pos, neg)


METHODS: dict[str, Method] = {"mean_diff": mean_diff, "pca": pca, "probe": probe, "actadd": actadd}
PAIRED = frozenset({"pca", "actadd"})  # row i of pos and neg are one pair
