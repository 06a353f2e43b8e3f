"""What mlxterp code passes, as mlx_steer takes it: module names (``model.model.layers.3``) to
site paths, ``interventions=`` dicts to mlx_steer interventions, inputs to token rows."""

from __future__ import annotations

from collections.abc import Mapping

import mlx.core as mx
import numpy as np

from ...engine import interventions as _iv
from ...backends.mlx import SteerableModel
from .intervention import as_native

MODULE_PREFIX = "model."
"""mlxterp names modules from the wrapped model, called "model": ``"model." + module path``."""


def native_key(steerable: SteerableModel, name: str) -> str:
    """mlxterp's ``model.<path>`` names to mlx_steer paths; other forms pass through."""
    if not isinstance(name, str):
        raise ValueError(f"intervention keys must be module names like 'layers.3', got {name!r}")
    path, sep, point = name.partition(":")
    if path.startswith(MODULE_PREFIX) and path[len(MODULE_PREFIX):] in steerable.modules:
        path = path[len(MODULE_PREFIX):]
    return path + sep + point


def native_interventions(steerable: SteerableModel, spec: Mapping | None) -> dict[str, list[_iv.Intervention]] | None:
    """``{module name: intervention}`` as ``{site key: mlx_steer interventions}``, validated."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"interventions must be a dict {{module name: fn}}, got {type(spec).__name__}")
    out: dict[str, list[_iv.Intervention]] = {}
    for name, value in spec.items():
        key = steerable.resolve_key(native_key(steerable, name))
        out.setdefault(key, []).extend(as_native(value, site=str(name)))
    return out


def token_rows(inputs: object) -> list[list[int]] | list[str]:
    """Text, a list of texts, token ids (a list or an ``mx.array``) or a list of token-id lists,
    as the rows :meth:`SteerableModel.run` takes."""
    if isinstance(inputs, mx.array):
        inputs = inputs.tolist()
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (list, tuple)) and inputs:
        if all(isinstance(x, str) for x in inputs):
            return list(inputs)
        if all(isinstance(x, (int, np.integer)) for x in inputs):
            return [[int(x) for x in inputs]]
        if all(isinstance(x, (list, tuple)) for x in inputs):
            return [[int(t) for t in row] for row in inputs]
    raise ValueError(
        f"unsupported input {type(inputs).__name__}: give text, a list of texts, token ids "
        "(a list or an mx.array) or a list of token-id lists"
    )
