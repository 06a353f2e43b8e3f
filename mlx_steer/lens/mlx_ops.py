"""The lens on the MLX backend: readout with the model's own modules (their hooks bypassed), and
translator training with ``mx.value_and_grad`` and ``mlx.optimizers`` (Adam with bias correction,
as torch's, or plain SGD). Gradients flow to the translators only; a quantized head passes them to
its input, its weights stay as they are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from ..backends.mlx import hooks as hk
from .ops import model_dtype

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from .ops import Translator
    from .readout import Readout


def _readout(model: Steerable, ro: Readout, h: mx.array) -> mx.array:
    mods = model.modules
    if ro.norm_path is not None:
        h = mods[ro.norm_path](h)
    head = mods[ro.head_path]
    z = head(h) if isinstance(head, (nn.Linear, nn.QuantizedLinear)) else head.as_linear(h)
    return ro.finish(z, mx.tanh).astype(mx.float32)


def _translate(h: mx.array, m: mx.array, b: mx.array) -> mx.array:
    return h + h @ m.T + b


class MLXLensOps:
    def logits(self, model: Steerable, readout: Readout, h: np.ndarray,
               translator: Translator | None = None) -> np.ndarray:
        dtype = model_dtype(model)
        x = mx.array(np.asarray(h, dtype=np.float32))
        if translator is not None:
            x = _translate(x, mx.array(translator[0]), mx.array(translator[1]))
        with hk.bypassed(model.modules.values()):
            out = _readout(model, readout, x.astype(dtype))
            mx.eval(out)
        return np.array(out)

    def fit(self, model: Steerable, readout: Readout, xs: np.ndarray, final: np.ndarray,
            batches: Sequence[np.ndarray], *, lr: float, optimizer: str,
            init: Sequence[Translator]) -> list[Translator]:
        dtype = model_dtype(model)
        params: dict[str, Any] = {"m": [mx.array(m) for m, _ in init], "b": [mx.array(b) for _, b in init]}
        opt = optim.Adam(lr, bias_correction=True) if optimizer == "adam" else optim.SGD(lr)

        def layer_loss(p: dict[str, mx.array], h: mx.array, logp: mx.array) -> mx.array:
            logq = nn.log_softmax(_readout(model, readout, _translate(h, p["m"], p["b"]).astype(dtype)), axis=-1)
            return mx.mean(mx.sum(mx.exp(logp) * (logp - logq), axis=-1))

        grad = mx.grad(layer_loss)
        with hk.bypassed(model.modules.values()):
            for idx in batches:
                logp = nn.log_softmax(_readout(model, readout, mx.array(final[idx]).astype(dtype)), axis=-1)
                mx.eval(logp)
                gm, gb = [], []
                for i in range(len(init)):  # one layer at a time: (tokens, vocab) per layer in memory
                    g = grad({"m": params["m"][i], "b": params["b"][i]}, mx.array(xs[idx, i]), logp)
                    mx.eval(g)
                    gm.append(g["m"])
                    gb.append(g["b"])
                opt.update(params, {"m": gm, "b": gb})  # type: ignore[arg-type]  # a parameter tree
                mx.eval(params, opt.state)
        return [(np.array(m), np.array(b)) for m, b in zip(params["m"], params["b"])]
