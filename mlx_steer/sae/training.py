"""Training a TopK sparse autoencoder on MLX from activations recorded over prompts: MLX autodiff,
Adam, decoder rows kept at unit norm, the encoder initialized as the decoder's transpose and the
decoder bias as the activations' mean (the recipe of Gao et al. 2024). Activations are recorded in
batches, held in host memory (float32), shuffled, and a held-out share reports explained variance."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.limits import check_seed
from .autoencoder import SparseAutoencoder
from .kept_tokens import kept_tokens

__all__ = ["TrainingReport", "record_tokens", "train_topk_sae"]


@dataclass(frozen=True)
class TrainingReport:
    """What training reached: on held-out tokens, the explained variance and L0; the share of
    features that never fired on them (dead); and the counts and time."""

    explained_variance: float
    l0: float
    dead_fraction: float
    train_tokens: int
    held_out_tokens: int
    steps: int
    seconds: float


def record_tokens(model: Any, prompts: Sequence[str], *, site: str, batch_size: int = 16, skip_first: bool = True,
                  max_norm_ratio: float | None = 10.0, progress: bool = False) -> np.ndarray:
    """Every real token's activation at ``site`` over ``prompts``, (tokens, D) float32. ``skip_first``
    leaves out each prompt's first token (the attention sink), and ``max_norm_ratio`` every token whose
    norm is more than that many times the median (other massive activations: a handful of them would
    dominate the loss and the explained variance); None keeps them."""
    from tqdm.auto import tqdm

    key = model.resolve(site).key
    rows: list[np.ndarray] = []
    bar = tqdm(total=len(prompts), unit="prompt", desc="recording", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        tr = model.run(batch, record=[key], logits=False)
        acts = model.to_numpy(tr.activations[key])
        for b, (n, pad) in enumerate(zip(tr.lengths, tr.padding)):
            rows.append(acts[b, pad : pad + n])
        bar.update(len(batch))
    bar.close()
    return kept_tokens(rows, skip_first=skip_first, max_norm_ratio=max_norm_ratio)[0].astype(np.float32)


def train_topk_sae(acts: np.ndarray, *, features: int, k: int, site: str, epochs: int = 4, batch_tokens: int = 1024,
                   lr: float = 1e-3, held_out: float = 0.1, seed: int = 0,
                   progress: bool = False) -> tuple[SparseAutoencoder, TrainingReport]:
    """Fit a TopK SAE to ``acts`` (tokens, D).

    Args:
        acts: Activations, e.g. from :func:`record_tokens`.
        features: Width of the SAE (d_sae).
        k: Features active per token.
        site: The site the activations were recorded at (written to the SAE).
        epochs: Passes over the training tokens.
        batch_tokens: Tokens per step.
        lr: Adam's learning rate.
        held_out: Share of the tokens kept out of training, for the report.
        seed: Seeds the split, the shuffling and the initialization (0..2**64-1).

    Raises:
        ValueError: too few tokens, or sizes or the seed out of range.
    """
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from tqdm.auto import tqdm

    x = np.asarray(acts, dtype=np.float32)
    if x.ndim != 2 or len(x) < 20:
        raise ValueError(f"training needs (tokens, D) activations with at least 20 tokens, got shape {x.shape}")
    if not 0 < k <= features:
        raise ValueError(f"k must be in 1..features ({features}), got {k}")
    for name, value in (("features", features), ("epochs", epochs), ("batch_tokens", batch_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be in (0, 1), got {held_out!r}")
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = max(1, int(round(held_out * len(x))))
    test, train = x[order[:n_test]], x[order[n_test:]]
    D = x.shape[1]
    mx.random.seed(seed)

    class TopK(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = rng.normal(size=(features, D)).astype(np.float32)
            w /= np.linalg.norm(w, axis=1, keepdims=True)
            self.W_dec = mx.array(w)
            self.W_enc = mx.array(w.T.copy())
            self.b_enc = mx.zeros((features,))
            self.b_dec = mx.array(train.mean(0))

        def __call__(self, xb: mx.array) -> mx.array:
            pre = (xb - self.b_dec) @ self.W_enc + self.b_enc
            cut = mx.stop_gradient(mx.topk(pre, k, axis=-1).min(axis=-1, keepdims=True))
            f = mx.maximum(pre, 0.0) * (pre >= cut)
            return f @ self.W_dec + self.b_dec

    sae = TopK()
    opt = optim.Adam(learning_rate=lr)
    scale = float(((train - train.mean(0)) ** 2).sum(-1).mean())  # loss as a share of the variance

    def loss_fn(model: TopK, xb: mx.array) -> mx.array:
        return ((model(xb) - xb) ** 2).sum(-1).mean() / scale

    step = nn.value_and_grad(sae, loss_fn)
    steps_per_epoch = max(1, math.ceil(len(train) / batch_tokens))
    bar = tqdm(total=epochs * steps_per_epoch, unit="step", desc="training", disable=not progress)
    t0, steps = time.perf_counter(), 0
    for _ in range(epochs):
        perm = rng.permutation(len(train))
        for s in range(steps_per_epoch):
            xb = mx.array(train[perm[s * batch_tokens : (s + 1) * batch_tokens]])
            loss, grads = step(sae, xb)
            opt.update(sae, grads)
            sae.W_dec = sae.W_dec / mx.linalg.norm(sae.W_dec, axis=1, keepdims=True)  # unit decoder rows
            mx.eval(sae.parameters(), opt.state, loss)
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.4f}")
    bar.close()
    out = SparseAutoencoder(np.array(sae.W_enc), np.array(sae.b_enc), np.array(sae.W_dec), np.array(sae.b_dec),
                            architecture="topk", k=k, site=site)
    rec = out.reconstruction(test, skip_first=False, max_norm_ratio=None)  # test: tokens already kept
    fired = (out.encode(test) > 0).any(0)
    report = TrainingReport(rec["explained_variance"], rec["l0"], float(1.0 - fired.mean()), len(train), len(test),
                            steps, time.perf_counter() - t0)
    return out, report
