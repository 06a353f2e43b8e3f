"""Each attention head's result: its output ``z`` (TransformerLens' ``hook_z``) and what it writes
to the residual stream, ``z_h · W_O[h]`` (``hook_result``).

``z`` is read at the site head ablation uses: the input of the attention's output projection
(``self_attn.o_proj:input``, GPT-2's ``attn.c_proj:input``), where the heads sit side by side, so
(B, T, H · d_head) becomes (B, T, H, d_head). Head ``h``'s write is ``z[..., h, :]`` through the
projection's columns ``h · d_head .. (h + 1) · d_head``; the writes summed over heads, plus the
projection's bias, are the attention output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.attention_sites import head_z_site, layer_indices, output_projection_path, output_weight

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["HeadResults", "head_results", "head_z_site", "output_weight", "split_heads"]


@dataclass(frozen=True)
class HeadResults:
    """Per layer: ``z[i]`` (B, T, H, d_head) and ``writes[i]`` (B, T, H, D) float32 at the recorded
    positions (left-padded rows as ``model.run`` records them), and ``bias[i]`` (D,) of the output
    projection or None: ``writes[i].sum(2) + bias[i]`` is the attention output."""

    z: dict[int, np.ndarray]
    writes: dict[int, np.ndarray]
    bias: dict[int, np.ndarray | None]

    @property
    def layers(self) -> list[int]:
        return sorted(self.z)


def head_results(
    model: Steerable,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    layers: int | Sequence[int] | None = None,
    positions: object = "all",
    chat: bool = False,
    interventions: Mapping | Any = None,
) -> HeadResults:
    """Each head's output and residual write at ``layers`` over one forward of ``prompts``.

    Args:
        model: A model of either backend.
        prompts: A string, a list of strings, or lists of token ids (left-padded as ``model.run`` pads).
        layers: Decoder layer indices (negative: from the end); None: every layer.
        positions: Which positions to keep, as ``record_positions`` of ``model.run``.
        chat: Wrap each prompt as a chat user turn.
        interventions: Steering applied during the forward (``z`` is read after it, as it flows on).

    Raises:
        ValueError: a bad layer index, a layer without an output projection, or a model whose
            head count does not divide the projection's input.
    """
    indices = layer_indices(layers, len(model.backend.layer_paths))
    sites = {i: head_z_site(model, i) for i in indices}
    weights = {i: _head_weights(model, i) for i in indices}  # before running: refuse early
    trace = model.run(prompts, record=list(sites.values()), record_positions=positions, chat=chat,
                      interventions=interventions, logits=False)
    z, writes, bias = {}, {}, {}
    for i, site in sites.items():
        z[i], writes[i] = _split(model.to_numpy(trace.activations[site]), *weights[i][:2])
        bias[i] = weights[i][2]
    return HeadResults(z, writes, bias)


def split_heads(model: Steerable, layer: int, recorded: Any) -> tuple[np.ndarray, np.ndarray]:
    """``z`` (..., H, d_head) and each head's residual write (..., H, D), float32, from what was
    recorded at :func:`head_z_site` of ``layer`` ((..., H · d_head), a backend or numpy array)."""
    w, H, _ = _head_weights(model, layer)
    x = recorded if isinstance(recorded, np.ndarray) else model.to_numpy(recorded)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"recorded width {x.shape[-1]} is not layer {layer}'s output projection input "
                         f"({w.shape[1]}); record {head_z_site(model, layer)!r}")
    return _split(x.astype(np.float32), w, H)


def _head_weights(model: Steerable, layer: int) -> tuple[np.ndarray, int, np.ndarray | None]:
    backend = model.backend
    (i,) = layer_indices(layer, len(backend.layer_paths))
    path = output_projection_path(backend.modules, backend.layer_paths[i])
    w, b = output_weight(backend, path)
    H = backend.n_heads
    if H is None:
        raise ValueError("the model's config gives no attention head count: per-head results need one")
    if w.shape[1] % H:
        raise ValueError(f"{path} takes {w.shape[1]} inputs, not a multiple of the head count {H}")
    return w, H, b


def _split(x: np.ndarray, w: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray]:
    z = x.reshape(*x.shape[:-1], H, -1)
    return z, np.einsum("...hd,ohd->...ho", z, w.reshape(w.shape[0], H, -1))  # W (D, H, d_head)
