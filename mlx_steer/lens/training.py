"""Training tuned-lens translators (Belrose et al. 2023) on the user's prompts: every layer's output
recorded at every real token (host float32), the model's own logits (its last layer read out) as
the targets, and per-layer affine translators initialized to the identity and fitted to minimize
KL(final distribution || lens distribution) with the backend's autodiff (MLX on MLX, torch on
torch; :mod:`~mlx_steer.lens.ops`). A held-out share of the prompts measures both lenses' KL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.limits import check_seed
from .logit_lens import _log_softmax
from .ops_choice import ops_for
from .readout import readout_of
from .tuned_lens import TunedLens

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["LensTrainingReport", "fit_translators", "lens_kl", "record_residuals", "train_tuned_lens"]


@dataclass(frozen=True)
class LensTrainingReport:
    """Held-out mean KL (nats) per translated layer, of the logit lens and of the trained tuned
    lens, with the counts and the wall time of training (recording excluded)."""

    layers: tuple[int, ...]
    logit_kl: tuple[float, ...]
    tuned_kl: tuple[float, ...]
    train_tokens: int
    held_out_tokens: int
    steps: int
    seconds: float

    def to_text(self) -> str:
        lines = ["layer  logit-lens KL  tuned-lens KL"]
        lines += [f"{i:>5}  {a:>13.4f}  {b:>13.4f}" for i, a, b in zip(self.layers, self.logit_kl, self.tuned_kl)]
        lines.append(f"{self.train_tokens} training tokens, {self.held_out_tokens} held out, {self.steps} steps, "
                     f"{self.seconds:.1f} s")
        return "\n".join(lines)


def record_residuals(model: Steerable, prompts: Sequence[str] | Sequence[Sequence[int]], *, batch_size: int = 16,
                     chat: bool = False) -> np.ndarray:
    """Every decoder layer's output at every real token of ``prompts``: (tokens, layers, D) float32."""
    keys = [model.resolve(p).key for p in model.layer_paths]
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        batch: Any = list(prompts[start : start + batch_size])
        tr = model.run(batch, record=keys, logits=False, chat=chat)
        acts = np.stack([model.to_numpy(tr.activations[k]) for k in keys], axis=2)  # (B, L, layers, D)
        out += [acts[b, pad : pad + n] for b, (n, pad) in enumerate(zip(tr.lengths, tr.padding))]
    return np.concatenate(out).astype(np.float32)


def lens_kl(model: Steerable, residuals: np.ndarray, tuned: TunedLens | None = None, *,
            chunk: int = 256) -> np.ndarray:
    """Mean KL(final || lens) per translated layer (0 .. layers - 2) over ``residuals`` from
    :func:`record_residuals`; the logit lens when ``tuned`` is None."""
    ops, ro = ops_for(model), readout_of(model)
    n = residuals.shape[1] - 1
    total = np.zeros(n)
    with model.calls("lens_kl"):
        for s in range(0, residuals.shape[0], chunk):
            x = residuals[s : s + chunk]
            logp = _log_softmax(ops.logits(model, ro, x[:, -1]))
            for layer in range(n):
                logq = _log_softmax(ops.logits(model, ro, x[:, layer], tuned.translator(layer) if tuned else None))
                total[layer] += float(np.sum(np.exp(logp) * (logp - logq)))
    return total / residuals.shape[0]


def fit_translators(model: Steerable, residuals: np.ndarray, *, steps: int, lr: float, optimizer: str = "sgd",
                    batch_tokens: int = 256, seed: int = 0, init: TunedLens | None = None) -> TunedLens:
    """Fit translators to ``residuals`` (tokens, layers, D). Each step takes ``batch_tokens`` tokens of
    a seeded shuffle (all of them, in order, when ``batch_tokens`` >= the token count: deterministic
    full-batch descent).

    Raises:
        ValueError: bad ``steps``, ``lr``, ``optimizer``, ``batch_tokens``, seed, or residuals of another shape.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer {optimizer!r} unknown; valid: 'adam', 'sgd'")
    if not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
    rng = np.random.default_rng(check_seed(seed))
    L, D = model.num_layers, model.hidden_size
    if residuals.ndim != 3 or residuals.shape[1:] != (L, D) or residuals.shape[0] < 1:
        raise ValueError(f"residuals must be (tokens, {L}, {D}) from record_residuals, got {residuals.shape}")
    start = init if init is not None else TunedLens.identity(model)
    start.check(model)
    N = residuals.shape[0]
    if batch_tokens >= N:
        batches = [np.arange(N)] * steps
    else:
        order: list[int] = []
        while len(order) < steps * batch_tokens:
            order += rng.permutation(N).tolist()
        batches = [np.array(order[i * batch_tokens : (i + 1) * batch_tokens]) for i in range(steps)]
    with model.calls("fit_translators"):
        fitted = ops_for(model).fit(model, readout_of(model), residuals[:, :-1], residuals[:, -1], batches,
                                    lr=float(lr), optimizer=optimizer, init=list(zip(start.m, start.b)))
    info = {"steps": str(steps), "lr": repr(float(lr)), "optimizer": optimizer, "batch_tokens": str(batch_tokens),
            "tokens": str(N), "seed": str(seed)}
    return TunedLens(model.model_id, D, L, tuple(m for m, _ in fitted), tuple(b for _, b in fitted), info)


def train_tuned_lens(model: Steerable, prompts: Sequence[str], *, steps: int = 100, lr: float = 1e-3,
                     optimizer: str = "sgd", batch_tokens: int = 256, held_out: float = 0.2, seed: int = 0,
                     chat: bool = False, batch_size: int = 16) -> tuple[TunedLens, LensTrainingReport]:
    """Record ``prompts``, hold out a seeded share of them, fit translators on the rest and measure
    both lenses on the held-out prompts. The model is read, never changed (a quantized one too).

    Args:
        model: A steerable model of either backend.
        prompts: Training text; short prompts work (every real token is a training example).
        steps: Optimizer steps.
        lr: Learning rate.
        optimizer: ``"sgd"`` (default: its steps shrink with the error, so layers the logit lens
            already reads well move little) or ``"adam"`` (steps of about ``lr`` per entry on every
            layer alike: keep ``lr`` near 1e-4 on real models).
        batch_tokens: Tokens per step.
        held_out: Share of the prompts kept out of training (0 < held_out < 1).
        seed: Seeds the split and the shuffling (0..2**64-1).
        chat: Wrap each prompt as a user turn with the chat template.
        batch_size: Prompts per recording forward.

    Returns:
        The translators and a :class:`LensTrainingReport`.

    Raises:
        ValueError: fewer than 2 prompts, ``held_out`` out of range, or bad training settings.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) < 2:
        raise ValueError(f"train_tuned_lens needs at least 2 prompts (some held out), got {len(prompts)}")
    if not isinstance(held_out, (int, float)) or not 0 < held_out < 1:
        raise ValueError(f"held_out must be a share in (0, 1), got {held_out!r}")
    rng = np.random.default_rng(check_seed(seed))
    order = rng.permutation(len(prompts))
    k = min(len(prompts) - 1, max(1, round(held_out * len(prompts))))
    test = record_residuals(model, [prompts[i] for i in order[:k]], batch_size=batch_size, chat=chat)
    train = record_residuals(model, [prompts[i] for i in order[k:]], batch_size=batch_size, chat=chat)
    t0 = time.perf_counter()
    lens = fit_translators(model, train, steps=steps, lr=lr, optimizer=optimizer, batch_tokens=batch_tokens, seed=seed)
    seconds = time.perf_counter() - t0
    logit, tuned = lens_kl(model, test), lens_kl(model, test, lens)
    report = LensTrainingReport(tuple(range(model.num_layers - 1)), tuple(map(float, logit)), tuple(map(float, tuned)),
                                train.shape[0], test.shape[0], steps, seconds)
    return lens, report
