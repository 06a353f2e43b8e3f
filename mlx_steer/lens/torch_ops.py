"""The lens on the torch backend: readout with the model's own modules through ``.forward`` (user
hooks do not run), and translator training with ``torch.autograd.grad`` (gradients to the
translators only: no ``.grad`` is left on the model's weights) and torch's Adam or SGD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .ops import model_device, model_dtype

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from .ops import Translator
    from .readout import Readout


def _readout(model: Steerable, ro: Readout, h: torch.Tensor) -> torch.Tensor:
    mods = model.modules
    if ro.norm_path is not None:
        h = mods[ro.norm_path].forward(h)
    return ro.finish(mods[ro.head_path].forward(h), torch.tanh).float()


def _translate(h: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return h + h @ m.T + b


class TorchLensOps:
    def logits(self, model: Steerable, readout: Readout, h: np.ndarray,
               translator: Translator | None = None) -> np.ndarray:
        dev, dtype = model_device(model), model_dtype(model)
        with torch.no_grad():
            x = torch.from_numpy(np.array(h, dtype=np.float32)).to(dev)
            if translator is not None:
                x = _translate(x, *(torch.from_numpy(np.array(t, dtype=np.float32)).to(dev) for t in translator))
            return _readout(model, readout, x.to(dtype)).cpu().numpy()

    def fit(self, model: Steerable, readout: Readout, xs: np.ndarray, final: np.ndarray,
            batches: Sequence[np.ndarray], *, lr: float, optimizer: str,
            init: Sequence[Translator]) -> list[Translator]:
        dev, dtype = model_device(model), model_dtype(model)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a, dtype=np.float32)).to(dev)

        ms = [t(m).requires_grad_(True) for m, _ in init]
        bs = [t(b).requires_grad_(True) for _, b in init]
        params = [p for pair in zip(ms, bs) for p in pair]
        opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
        for idx in batches:
            with torch.no_grad():
                logp = torch.log_softmax(_readout(model, readout, t(final[idx]).to(dtype)), dim=-1)
            for i in range(len(init)):  # one layer at a time: (tokens, vocab) per layer in memory
                logq = torch.log_softmax(_readout(model, readout, _translate(t(xs[idx, i]), ms[i], bs[i]).to(dtype)), -1)
                loss = (logp.exp() * (logp - logq)).sum(-1).mean()
                ms[i].grad, bs[i].grad = torch.autograd.grad(loss, [ms[i], bs[i]])
            opt.step()
        return [(m.detach().cpu().numpy(), b.detach().cpu().numpy()) for m, b in zip(ms, bs)]
