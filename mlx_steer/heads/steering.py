"""Head-level steering: a vector added to chosen attention heads' outputs.

Head ``h``'s output ``z_h`` (length ``d_head``) sits at columns ``h · d_head .. (h + 1) · d_head`` of
the attention output projection's input (the site :func:`~mlx_steer.heads.head_z_site` names), so
``{layer: {head: v}}`` is one ``add_vector`` per layer at that site, of a (H · d_head) vector that is
``v`` in each chosen head's slice and zero elsewhere. It takes every position selector, ``rows=`` and
a condition, as any ``add_vector`` does (ITI, Li et al. 2023, steers this way).

    from mlx_steer.heads import add_to_heads
    model.generate("...", interventions=add_to_heads(model, {3: {1: v}}, scale=2.0, positions="generated"))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..engine import interventions as iv
from ..engine.conditions import Rule
from ..engine.host_array import as_vector
from ..engine.attention_sites import head_shape, head_z_site, layer_indices

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["add_to_heads", "head_shape", "padded_head_vector"]


def add_to_heads(
    model: Steerable,
    heads: Mapping[int, Mapping[int, Any]],
    *,
    scale: float = 1.0,
    positions: object = "all",
    rows: Iterable[int] | None = None,
    when: Rule | None = None,
) -> dict[str, iv.AddVector]:
    """``scale * v`` added to head ``h``'s output at ``layer`` for each ``{layer: {head: v}}``.

    Args:
        model: A model of either backend.
        heads: ``{layer: {head: v}}``, ``v`` of length ``d_head`` (layers negative from the end).
        scale: Multiplier of every vector.
        positions: A position selector (``"all"``, ``"last"``, indices, spans ...: ``as_positions``).
        rows: Act only on these batch rows (keys, as ``Intervention.for_rows``).
        when: Act on a row only where this condition holds for its prompt (as ``Intervention.when``).

    Returns:
        ``{site: add_vector}``, one per layer, at the layer's attention output projection's input.

    Raises:
        ValueError: a layer or head index out of range, or a vector whose length is not ``d_head``
            (each naming the value and the valid range).
    """
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(f"heads must be a non-empty {{layer: {{head: vector}}}} mapping, got {heads!r}")
    out: dict[str, iv.AddVector] = {}
    n_layers = len(model.backend.layer_paths)
    for layer, chosen in heads.items():
        (i,) = layer_indices(layer, n_layers)
        site = head_z_site(model, i)
        if site in out:
            raise ValueError(f"layer {layer} is given twice (as {i} and {i - n_layers}); give each layer once")
        spec: iv.Intervention = iv.add_vector(padded_head_vector(model, i, chosen), scale=scale, positions=positions)
        spec = spec if rows is None else spec.for_rows(*rows)
        out[site] = cast(iv.AddVector, spec if when is None else spec.when(when))  # for_rows, when keep the type
    return out


def padded_head_vector(model: Steerable, layer: int, chosen: Mapping[int, Any]) -> np.ndarray:
    """The (H · d_head) float32 vector holding each ``{head: v}`` in that head's slice, zero elsewhere.

    Raises:
        ValueError: no heads, a head out of range, or a vector of the wrong length.
    """
    H, d_head = head_shape(model, layer)
    if not isinstance(chosen, Mapping) or not chosen:
        raise ValueError(f"layer {layer}: give a non-empty {{head: vector}} mapping, got {chosen!r}")
    padded = np.zeros(H * d_head, dtype=np.float32)
    seen: set[int] = set()
    for head, v in chosen.items():
        if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not -H <= head < H:
            raise ValueError(f"head {head!r} out of range at layer {layer} ({H} heads); valid: {-H}..{H - 1}")
        vec = as_vector(v, what=f"the vector of layer {layer} head {head}")
        if vec.shape != (d_head,):
            raise ValueError(f"the vector of layer {layer} head {head} has length {vec.shape[-1]} (shape "
                             f"{vec.shape}); this model's heads are d_head = {d_head} wide")
        h = int(head) % H
        if h in seen:
            raise ValueError(f"head {head} of layer {layer} is given twice; give each head once")
        seen.add(h)
        padded[h * d_head:(h + 1) * d_head] += vec
    return padded
