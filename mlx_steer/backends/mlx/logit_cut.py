"""Logits at chosen positions only: the final norm's output gathered at those positions, so the head
(an ``lm_head`` or the tied embedding, with any softcapping after it) runs on (B, k, D), not (B, L, D).

The norm is patched per instance for one forward, like every other hook; each forward's rows and
offsets come from the position state, so the same patch serves a left-padded batch and rows run
one at a time. Not used (the caller gathers the full logits instead) where the norm or the head
carries a hook of its own, whose recorders and interventions must see every position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from ...engine.paths import final_norm_path
from . import hooks as hk
from .arrays import XP

if TYPE_CHECKING:
    from ...engine.protocols import Backend


def cut_at_norm(backend: Backend, positions: np.ndarray) -> Callable[[], None] | None:
    """Patch the final norm to keep ``positions`` ((B, k) absolute, by row key) of each forward;
    returns what undoes it, or None where the logits must be gathered after the forward."""
    norm = final_norm_path(backend.modules, backend.resolver.container)
    if norm is None or backend.distributed is not None:
        return None
    module, head = backend.modules[norm], backend.modules.get(backend.unembedding_path)
    if hk.is_patched(module) or (head is not None and hk.is_patched(head)):
        return None
    state = backend.state

    def keep(h: mx.array) -> mx.array:
        cols = positions[state.rows] - state.pos[:, :1]  # pos[:, 0]: the forward's first column, absolute
        return XP.take_along_rows(h, cols)

    entry = hk.Entry(after=hk.on_output(keep))
    hk.attach(module, entry)
    return lambda: hk.detach(module, entry)


def logits_at(backend: Backend, at: np.ndarray | None, run: Callable[[], mx.array],
              columns: Callable[[np.ndarray], np.ndarray]) -> mx.array:
    """``run()``'s logits at ``at`` ((B, k) absolute positions) when given: the norm cut there for the
    forward, or, where it cannot be cut, the full logits gathered at ``columns(at)`` after it."""
    cut = None if at is None else cut_at_norm(backend, at)
    try:
        logits = run()
    finally:
        if cut is not None:
            cut()
    if at is not None and cut is None:
        logits = XP.take_along_rows(logits, columns(at))
    return logits
