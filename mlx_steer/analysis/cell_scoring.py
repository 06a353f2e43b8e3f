"""CellScorer: scores a sweep's cells (interventions) over prompt batches, against one unsteered pass.

Each cell is scored by a forward over the prompts: behaviour at each prompt's last token (a logit
difference, or a projection read at a site) and KL(unsteered || steered) at every real position.
Several cells share one forward as blocks of rows, each block steered by its own cell (per-row
steering). The unsteered pass runs once: it keeps the next-token distributions KL is scored against
and, with ``share_layers``, the input of each steered layer, so a steered forward starts at its
lowest steered layer (``run(from_layer=..., hidden=...)``) instead of recomputing the unsteered
layers below it. The first such forward also carries one prompt unsteered, checked against the
unsteered pass; a model where they differ (or that cannot skip layers) runs every forward whole.

With ``shared_prefix`` (every cell steers each prompt's last position only), each batch's prompts
but their last token run once with a KV cache (:mod:`~mlx_steer.engine.shared_prefix`) and each
cell runs one token per prompt from it: the positions before the last are the unsteered pass's
(KL 0 there), so only the last position's KL and behaviour are computed per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..vectors import similarity
from ..engine.layer_skip import latest_start

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["CellScorer", "Reference"]

SHARED_INPUT_BUDGET = 1 << 28  # bytes of kept layer inputs above which every forward runs whole


class CellScorer:
    """(behaviour, KL) per cell; see the module docstring.

    Args:
        model: The steerable model.
        chunks: The prompt batches (token ids), in order.
        read_key: Site ``projection`` reads (None for ``logit_diff``).
        unit: The unit direction ``projection`` projects on.
        target: Token ids whose logits ``logit_diff`` raises.
        contrast: Token ids it subtracts.
        rows_per_forward: Rows one forward may carry (prompts x cells).
        steered_layers: Per cell, the highest layer its forward may start at (see :func:`steered_layer`).
        share_layers: Start steered forwards at their lowest steered layer (see above).
    """

    def __init__(
        self, model: Steerable, chunks: list[list[list[int]]], read_key: str | None,
        unit: np.ndarray | None, target: list[int] | None, contrast: list[int] | None, *, rows_per_forward: int,
        steered_layers: Sequence[int | None] = (), share_layers: bool = True, shared_prefix: bool = False,
    ):
        self.model, self.chunks, self.rows_per_forward = model, chunks, rows_per_forward
        self.read_key, self.unit, self.target, self.contrast = read_key, unit, target, contrast
        self.base: list[Reference] | None = None  # per batch: the unsteered next-token distributions
        self.inputs: list[dict[int, Any]] = []  # per batch: {layer: its (rows, length, D) unsteered input}
        self.floor = _read_floor(model, read_key)
        starts = {min(layer, self.floor) for layer in steered_layers if layer is not None}
        self.starts = sorted(s for s in starts if 1 <= s < len(model.layer_paths)) if share_layers else []
        kept = sum(len(c) * max(len(t) for t in c) for c in chunks) * model.hidden_size * 4  # bytes per layer
        if kept * len(self.starts) > SHARED_INPUT_BUDGET:
            self.starts = []
        self.checked: bool | None = None  # whether a forward that skips layers matched the whole one
        # prompts of one token have no prefix to share
        self.prefixes: list[Any] | None = [] if shared_prefix and min(len(t) for c in chunks for t in c) >= 2 else None
        self.base_last: list[Reference] = []  # per batch: the unsteered distributions at each prompt's last token

    def baseline(self) -> float:
        """The unsteered pass: its mean behaviour; keeps what the steered cells are scored against."""
        return self.cells([None])[0][0]

    def cells(self, specs: list[dict | None], *, progress: Callable[[int], Any] | None = None,
              layers: Sequence[int | None] | None = None) -> list[tuple[float, float]]:
        """(mean behaviour, mean KL to the unsteered pass) for each of ``specs``, steered at
        ``layers`` (each spec's decoder layer, or None)."""
        width = max(len(c) for c in self.chunks)
        per_forward = max(1, self.rows_per_forward // width)
        layers = list(layers) if layers is not None else [None] * len(specs)
        out: list[tuple[float, float]] = []
        for start in range(0, len(specs), per_forward):
            group = specs[start : start + per_forward]
            lowest = [x for x in layers[start : start + len(group)] if x is not None]
            from_layer = min([self.floor, *lowest]) if len(lowest) == len(group) else 0
            values: list[list[np.ndarray]] = [[] for _ in group]
            kl, n_pos = np.zeros(len(group)), 0
            base = []
            for b, chunk in enumerate(self.chunks):
                last = self.prefixes is not None and self.base is not None
                for c, (value, logits) in enumerate(self._from_prefix(b, chunk, group) if last
                                                    else self._run(b, chunk, group, from_layer)):
                    values[c].append(value)
                    if self.base is None:
                        base.append(Reference.of(logits))
                        self.base_last.append(base[-1].at(np.cumsum([len(t) for t in chunk]) - 1))
                    else:
                        kl[c] += (self.base_last if last else self.base)[b].kl_sum(logits)
                n_pos += sum(len(t) for t in chunk)  # every real position (KL 0 before the last, from a prefix)
            if self.base is None:
                self.base, n_pos = base, 0
            out.extend((float(np.mean(np.concatenate(v))), float(kl[c] / n_pos) if n_pos else 0.0)
                       for c, v in enumerate(values))
            if progress is not None:
                progress(len(group))
        return out

    def _run(self, b: int, chunk: list[list[int]], group: list[dict | None],
             from_layer: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward of ``chunk`` repeated per cell of ``group``, each copy steered by its cell:
        per cell, the behaviour of each prompt and the logits at every real position.

        The first forward that starts at a layer carries one more row, the batch's first prompt
        unsteered: its next-token distributions must match the unsteered pass's, or the model
        cannot skip layers and the forward runs again whole (and so does every later one)."""
        m, n = self.model, len(chunk)
        unsteered = group == [None]
        record: dict[str, str] = {self.read_key: "last"} if self.read_key else {}
        if unsteered:
            record.update({f"{m.layer_paths[s]}:input": "all" for s in self.starts})
        rows = chunk * len(group)
        per_row = None if unsteered else [spec for spec in group for _ in chunk]
        skip: dict[str, Any] = {}
        check = False
        if not unsteered and from_layer in self.starts and self.checked is not False:
            hidden = [self.inputs[b][from_layer]] * len(group)
            check = self.checked is None
            if check:  # the batch's first prompt, unsteered, as one more row
                rows, per_row = rows + chunk[:1], (per_row or []) + [None]
                hidden.append(self.inputs[b][from_layer][0:1])
            skip = dict(from_layer=from_layer, hidden=m.xp.concatenate(hidden, axis=0))
        # a cell whose strength overflows shows as NaN, not as an error for the whole sweep
        try:
            tr = m.run(rows, interventions=per_row, record=record or None, logits=True, check_finite=False, **skip)
        except (ValueError, RuntimeError, TypeError, IndexError):
            if not check:
                raise
            tr = None  # a model whose layers cannot be skipped: run it whole
        if check:
            self.checked = tr is not None and self._matches_unsteered(b, chunk[0], m.to_numpy(tr.logits[-1]))
        if tr is None or not self.checked and check:
            return self._run(b, chunk, group, from_layer)  # whole, this time and from now on
        logits = m.to_numpy(tr.logits)[: n * len(group)]
        if unsteered:
            self.inputs.append({s: tr.activations[f"{m.layer_paths[s]}:input"] for s in self.starts})
        acts = m.to_numpy(tr.activations[self.read_key])[:, -1] if self.read_key and self.unit is not None else None
        real = np.arange(logits.shape[1])[None, :] >= np.asarray(tr.padding[:n])[:, None]
        out = []
        for c in range(len(group)):
            sl = slice(c * n, (c + 1) * n)
            value = (similarity.project(acts[sl], self.unit) if acts is not None and self.unit is not None
                     else self._logit_diff(logits[sl, -1]))
            out.append((value, logits[sl][real]))
        return out

    def _from_prefix(self, b: int, chunk: list[list[int]], group: list[dict | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`_run` from batch ``b``'s shared prefix (its prompts but their last token, run once):
        per cell, the behaviour of each prompt and the logits at its last token."""
        from ..engine.shared_prefix import shared_prefix

        m, n = self.model, len(chunk)
        assert self.prefixes is not None
        if len(self.prefixes) <= b:
            self.prefixes.append(shared_prefix(m, [t[:-1] for t in chunk]))
        tr = self.prefixes[b].run([t[-1:] for t in chunk] * len(group), prefix_of=list(range(n)) * len(group),
                                  interventions=[spec for spec in group for _ in chunk],
                                  record={self.read_key: "last"} if self.read_key else None, logits="last",
                                  check_finite=False, max_rows=self.rows_per_forward)
        logits = m.to_numpy(tr.logits)[:, 0]
        acts = m.to_numpy(tr.activations[self.read_key])[:, -1] if self.read_key and self.unit is not None else None
        out = []
        for c in range(len(group)):
            sl = slice(c * n, (c + 1) * n)
            value = (similarity.project(acts[sl], self.unit) if acts is not None and self.unit is not None
                     else self._logit_diff(logits[sl]))
            out.append((value, logits[sl]))
        return out

    def _matches_unsteered(self, b: int, prompt: list[int], logits: np.ndarray) -> bool:
        """Whether (length, V) logits of batch ``b``'s first prompt give the unsteered pass's
        next-token distributions at its real positions (within float tolerance)."""
        assert self.base is not None
        real = logits[logits.shape[0] - len(prompt):].astype(np.float64)
        probs = np.exp(real - _logsumexp(real)[:, None])
        want = self.base[b].probs[: len(prompt)]  # the batch's rows are flattened row-major: row 0 first
        return bool(np.allclose(probs, want, rtol=1e-3, atol=1e-4))

    def _logit_diff(self, last: np.ndarray) -> np.ndarray:
        target, contrast = self.target or [], self.contrast or []
        V = last.shape[-1]
        bad = [t for t in target + contrast if not 0 <= t < V]
        if bad:
            raise ValueError(f"token ids {bad} out of range for a vocabulary of {V}; valid: 0..{V - 1}")
        last = last.astype(np.float64)
        return last[:, target].mean(-1) - last[:, contrast].mean(-1)


def steered_layer(model: Steerable, spec: dict | None) -> int | None:
    """The highest layer a forward steered by ``spec`` may start at (None for no steering)."""
    return min(latest_start(model.backend, key.split(":", 1)[0]) for key in spec) if spec else None


def _read_floor(model: Steerable, read_key: str | None) -> int:
    """The highest layer a forward may start at and still run ``read_key``'s module."""
    return len(model.layer_paths) if read_key is None else latest_start(model.backend, read_key.split(":", 1)[0])


class Reference:
    """The unsteered next-token distributions of one batch, kept in the form KL is scored against.

    KL(p || q) at a position, with ``q = softmax(x)``, is ``Σ p log p - Σ p x + logsumexp(x) Σ p``:
    the first term and ``Σ p`` are computed once here, so a steered cell costs one exp pass over
    its logits (for the logsumexp) and one dot product, never its own log-softmax (float64 throughout).
    """

    def __init__(self, probs: np.ndarray, neg_entropy: np.ndarray, mass: np.ndarray):
        self.probs, self.neg_entropy, self.mass = probs, neg_entropy, mass

    @classmethod
    def of(cls, logits: np.ndarray) -> Reference:
        """From (positions, V) unsteered logits."""
        x = logits.astype(np.float64)
        logp = x - _logsumexp(x)[:, None]
        probs = np.exp(logp)
        return cls(probs, np.einsum("pv,pv->p", probs, logp), probs.sum(axis=-1))

    def at(self, positions: np.ndarray) -> Reference:
        """The distributions at ``positions`` (indices into the flattened positions) only."""
        return Reference(self.probs[positions], self.neg_entropy[positions], self.mass[positions])

    def kl_sum(self, logits: np.ndarray) -> float:
        """Σ over positions of KL(unsteered || steered), for (positions, V) steered logits."""
        x = logits.astype(np.float64)
        return float(np.sum(self.neg_entropy - np.einsum("pv,pv->p", self.probs, x) + _logsumexp(x) * self.mass))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp of a float64 (positions, V) array (+inf or NaN rows stay so)."""
    top = x.max(axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    return safe + np.log(np.exp(x - safe[:, None]).sum(axis=-1))
