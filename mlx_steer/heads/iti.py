"""Inference-time intervention (ITI, Li et al. 2023): probe every attention head on contrast data,
pick the heads whose probes generalize best, and shift those heads' outputs along their direction.

1. Each head's output ``z`` (:func:`~mlx_steer.heads.head_z_site`) is recorded for positive and
   negative prompts at the last token (or averaged over each prompt's tokens).
2. Per (layer, head), an L2-regularized logistic-regression probe is fitted on a training split
   and scored on the held-out split (:mod:`~mlx_steer.heads.iti_fit`): accuracy per layer × head,
   as a :class:`~mlx_steer.heads.HeadScoreTable` (text, CSV, JSON, heatmap).
3. The top-K heads by held-out accuracy are shifted by ``α · σ · θ``: ``θ`` the unit direction,
   by default the **mass-mean** direction (mean positive z minus mean negative z, the variant Li et
   al. found works best; ``direction="probe"`` takes the probe's weight vector instead), and ``σ``
   the standard deviation of all recorded z projected on ``θ``. The shift is head steering
   (:func:`~mlx_steer.heads.add_to_heads`); at every position it bakes into the output
   projection's bias (``model.export``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import interventions as iv
from ..engine.attention_sites import layer_indices
from .head_results import head_z_site, split_heads
from .iti_fit import accuracy, fit_logistic, heldout_split
from .scores_table import HeadScore, HeadScoreTable
from .steering import add_to_heads

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["DIRECTIONS", "READS", "HeadProbes", "fit_head_probes", "probe_heads"]

DIRECTIONS = ("mass_mean", "probe")
READS = ("last", "mean")


@dataclass(frozen=True)
class HeadProbes:
    """Probes per layer × head. Arrays are indexed ``[layers.index(layer), head]``.

    Attributes:
        layers: The probed decoder layers.
        accuracy: (layers, H) held-out accuracy.
        train_accuracy: (layers, H) accuracy on the training split.
        probe: (layers, H, d_head) unit probe weight directions (pointing to the positive class).
        mass_mean: (layers, H, d_head) unit directions of mean positive z minus mean negative z (training split).
        sigma: ``{"mass_mean": (layers, H), "probe": (layers, H)}``: std of all recorded z projected
            on each direction.
        n_train: Training examples (both classes).
        n_heldout: Held-out examples (both classes).
        info: Settings, as strings.
    """

    layers: tuple[int, ...]
    accuracy: np.ndarray
    train_accuracy: np.ndarray
    probe: np.ndarray
    mass_mean: np.ndarray
    sigma: Mapping[str, np.ndarray]
    n_train: int
    n_heldout: int
    info: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return int(self.accuracy.shape[1])

    def table(self) -> HeadScoreTable:
        """Held-out accuracy per (layer, head), layer then head order (``.sorted()``, ``.top(k)``,
        ``.to_text()``, ``.to_csv()``, ``.heatmap()``)."""
        rows = tuple(HeadScore("probe_accuracy", layer, h, float(self.accuracy[i, h]))
                     for i, layer in enumerate(self.layers) for h in range(self.n_heads))
        return HeadScoreTable(rows, "probe_accuracy", dict(self.info))

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the highest held-out accuracy, ``(layer, head)``, best first (ties in
        layer, head order).

        Raises:
            ValueError: ``k`` not in 1..(layers × heads).
        """
        total = len(self.layers) * self.n_heads
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= total:
            raise ValueError(f"k {k!r} out of range: {total} heads were probed; valid: 1..{total}")
        return [(r.layer, r.head) for r in self.table().top(int(k)).rows]

    def shifts(self, *, k: int, alpha: float, direction: str = "mass_mean") -> dict[int, dict[int, np.ndarray]]:
        """``{layer: {head: α · σ · θ}}`` for the top ``k`` heads (the ITI shift, float32).

        Raises:
            ValueError: a bad ``k``, a non-finite ``alpha``, an unknown ``direction``.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        units = self.mass_mean if direction == "mass_mean" else self.probe
        out: dict[int, dict[int, np.ndarray]] = {}
        for layer, head in self.top(k):
            i = self.layers.index(layer)
            shift = float(alpha) * float(self.sigma[direction][i, head]) * units[i, head]
            out.setdefault(layer, {})[head] = shift.astype(np.float32)
        return out

    def interventions(self, model: Steerable, *, k: int, alpha: float, direction: str = "mass_mean",
                      positions: object = "all") -> dict[str, iv.AddVector]:
        """The ITI shift of the top ``k`` heads as head steering (``model.generate(interventions=...)``,
        ``model.export(...)`` at ``positions="all"``)."""
        return add_to_heads(model, self.shifts(k=k, alpha=alpha, direction=direction), positions=positions)


def probe_heads(
    model: Steerable,
    positive: Sequence[str] | Sequence[Sequence[int]],
    negative: Sequence[str] | Sequence[Sequence[int]],
    *,
    layers: int | Sequence[int] | None = None,
    read: str = "last",
    chat: bool = False,
    holdout: float = 0.25,
    seed: int = 0,
    l2: float = 1e-2,
    batch_size: int = 16,
) -> HeadProbes:
    """Record every head's ``z`` on the contrast prompts and probe it (see the module).

    Args:
        model: A model of either backend.
        positive: Prompts of the behaviour to steer towards (strings or token-id lists).
        negative: Prompts of the behaviour to steer away from.
        layers: Decoder layers to probe (negative from the end); None: every layer.
        read: ``"last"``: z at each prompt's last token; ``"mean"``: averaged over its tokens.
        chat: Wrap each prompt as a chat user turn.
        holdout: Fraction of each class held out to score the probes.
        seed: Seed of the held-out split.
        l2: The probes' L2 penalty (on standardized features).
        batch_size: Prompts per forward.

    Raises:
        ValueError: a bad layer, ``read``, ``holdout`` or ``batch_size``, or a class with fewer than 2 prompts.
    """
    if read not in READS:
        raise ValueError(f"unknown read {read!r}; valid: {', '.join(READS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for prompts, what in ((positive, "positive"), (negative, "negative")):
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError(f"{what} must be a list of prompts, got {type(prompts).__name__}")
    heldout_split(len(positive), len(negative), holdout=holdout, seed=seed)  # refuse before any forward
    indices = layer_indices(layers, len(model.backend.layer_paths))
    z_pos = _record(model, positive, indices, read=read, chat=chat, batch_size=batch_size)
    z_neg = _record(model, negative, indices, read=read, chat=chat, batch_size=batch_size)
    info = {"model": str(model.backend.model_id), "read": read, "positive": str(len(positive)),
            "negative": str(len(negative)), "holdout": str(holdout), "seed": str(seed), "l2": str(l2)}
    return fit_head_probes(z_pos, z_neg, holdout=holdout, seed=seed, l2=l2, info=info)


def fit_head_probes(positive: Mapping[int, np.ndarray], negative: Mapping[int, np.ndarray], *,
                    holdout: float = 0.25, seed: int = 0, l2: float = 1e-2,
                    info: Mapping[str, str] | None = None) -> HeadProbes:
    """Probe recorded head outputs: ``{layer: (n, H, d_head)}`` per class, one example per row
    (e.g. :func:`~mlx_steer.heads.split_heads` of what was recorded, at one position).

    Raises:
        ValueError: the classes' layers or shapes differ, or a class is too small to split.
    """
    if set(positive) != set(negative) or not positive:
        raise ValueError(f"positive and negative must hold the same layers, got {sorted(positive)} and "
                         f"{sorted(negative)}")
    layers = tuple(sorted(positive))
    shapes = {(np.shape(positive[i])[1:], np.shape(negative[i])[1:]) for i in layers}
    if len(shapes) != 1 or len({s for pair in shapes for s in pair}) != 1 or len(next(iter(shapes))[0]) != 2:
        raise ValueError(f"every layer's z must be (n, H, d_head), alike for both classes; got {sorted(shapes)}")
    n_pos, n_neg = len(positive[layers[0]]), len(negative[layers[0]])
    if any(len(positive[i]) != n_pos or len(negative[i]) != n_neg for i in layers):
        raise ValueError("every layer must hold the same number of examples per class")
    out_pos, out_neg = heldout_split(n_pos, n_neg, holdout=holdout, seed=seed)
    test = np.concatenate([out_pos, out_neg])
    y = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    z = np.stack([np.concatenate([positive[i], negative[i]]).astype(np.float64) for i in layers])  # (L, N, H, d)
    L, N, H, d = z.shape
    x = z.transpose(0, 2, 1, 3).reshape(L * H, N, d)  # one probe per (layer, head)
    w, b = fit_logistic(x[:, ~test], y[~test], l2=l2)
    mass = x[:, ~test & (y == 1)].mean(1) - x[:, ~test & (y == 0)].mean(1)
    units = {"probe": _unit(w), "mass_mean": _unit(mass)}
    sigma = {name: np.einsum("pnd,pd->pn", x, u).std(1).reshape(L, H) for name, u in units.items()}
    return HeadProbes(layers, accuracy(x[:, test], y[test], w, b).reshape(L, H),
                      accuracy(x[:, ~test], y[~test], w, b).reshape(L, H), units["probe"].reshape(L, H, d),
                      units["mass_mean"].reshape(L, H, d), sigma, int((~test).sum()), int(test.sum()), dict(info or {}))


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def _record(model: Steerable, prompts: Sequence[Any], layers: list[int], *, read: str, chat: bool,
            batch_size: int) -> dict[int, np.ndarray]:
    """``{layer: (n, H, d_head)}``: each prompt's z at its last token or averaged over its tokens."""
    sites = {i: head_z_site(model, i) for i in layers}
    parts: dict[int, list[np.ndarray]] = {i: [] for i in layers}
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        trace = model.run(batch, record=list(sites.values()), record_positions="last" if read == "last" else "all",
                          chat=chat, logits=False)
        for i, site in sites.items():
            x = model.to_numpy(trace.activations[site]).astype(np.float64)  # (B, T, H * d)
            if read == "last":
                parts[i].append(x[:, 0])
            else:  # left-padded: row r's tokens are its last lengths[r] positions
                parts[i].append(np.stack([x[r, x.shape[1] - n:].mean(0) for r, n in enumerate(trace.lengths)]))
    return {i: split_heads(model, i, np.concatenate(parts[i]).astype(np.float32))[0] for i in layers}
