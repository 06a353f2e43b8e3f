"""Attention patterns, recorded only when asked: over one forward (:func:`attention_patterns`) or
over whatever runs inside a ``with`` block, e.g. a generation (:func:`record_patterns`).

The default path is untouched: nothing is installed unless a pattern is asked for, and while it is,
the model's own attention still computes the output (the weights are computed beside it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..engine.attention_sites import layer_indices
from .pattern_recording import AttentionPatterns, PatternRecording

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["AttentionPatterns", "PatternRecording", "attention_patterns", "record_patterns"]


@contextlib.contextmanager
def record_patterns(model: Steerable, *, layers: int | Sequence[int] | None = None) -> Iterator[PatternRecording]:
    """Record the attention patterns of ``layers`` over every forward inside the block.

    ``with record_patterns(model, layers=[0, 2]) as rec: model.generate(prompt, max_tokens=8)``,
    then ``rec.result()`` is an :class:`AttentionPatterns` over the whole sequence: the prompt's
    rows, then one row per token fed back to the model, each covering its full context (the
    KV cache included). The last generated token has a row only if the loop ran a step after it.

    Args:
        model: A model of either backend.
        layers: Decoder layer indices (negative: from the end); None records every layer.

    Raises:
        ValueError: a bad layer index, a model sharded over ranks, or an architecture whose
            attention cannot be read (named, with what is supported).
    """
    backend = model.backend
    indices = layer_indices(layers, len(backend.layer_paths))
    if backend.distributed is not None:
        raise ValueError(f"attention patterns cannot be recorded on a model sharded over ranks ({backend.distributed})")
    recording = PatternRecording(backend.state, backend.xp, indices)
    with contextlib.ExitStack() as undo:
        undo.callback(backend.attach_tracker())
        undo.callback(backend.attach_patterns(indices, recording.add))
        yield recording


def attention_patterns(
    model: Steerable,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    layers: int | Sequence[int] | None = None,
    chat: bool = False,
    interventions: Mapping | Any = None,
) -> AttentionPatterns:
    """The attention patterns of one forward over ``prompts`` (left-padded as :meth:`run` pads them).

    Args:
        model: A model of either backend.
        prompts: A string, a list of strings, or lists of token ids.
        layers: Decoder layer indices (negative: from the end); None: every layer.
        chat: Wrap each prompt as a chat user turn.
        interventions: Steering applied during the forward, as for ``model.run``.

    Returns:
        ``result[layer]`` is (rows, H, N, N) float32 by absolute position: row ``r``'s pattern is
        ``result.row(r, layer)``, (H, n, n) over its own tokens; padding and future keys are 0.

    Raises:
        ValueError: as :func:`record_patterns`, or bad prompts or interventions (nothing is left
            installed).
    """
    with record_patterns(model, layers=layers) as rec:
        model.run(prompts, chat=chat, interventions=interventions, logits=False)
    return rec.result()
