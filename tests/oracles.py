"""Independent oracles for the MLX backend: run blocks by hand, or swap a layer for a test-owned
wrapper in the layer list. Nothing here uses mlx_steer's patching or position code."""

from __future__ import annotations

import contextlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_attention_mask


def embed(model, tokens: mx.array) -> mx.array:
    """The residual stream entering block 0, computed by hand per architecture."""
    inner = model.model
    kind = model.args.model_type
    if kind == "gpt2":
        return inner.wte(tokens) + inner.wpe(mx.arange(tokens.shape[1]))
    h = inner.embed_tokens(tokens)
    if kind.startswith("gemma"):
        h = h * mx.array(model.args.hidden_size**0.5, dtype=h.dtype)
    return h


def block_outputs(model, tokens: list[int]) -> list[np.ndarray]:
    """Output of every block for one sequence, running the blocks one by one."""
    h = embed(model, mx.array([tokens]))
    mask = create_attention_mask(h, None, return_array=model.args.model_type == "gemma2")
    outs = []
    for layer in model.layers:
        h = layer(h, mask, None)
        outs.append(np.array(h[0]))
    return outs


class _AddDelta(nn.Module):
    """Test-owned wrapper: adds delta[p] to the block output at absolute position p."""

    def __init__(self, inner: nn.Module, delta: np.ndarray):
        super().__init__()
        self.inner = inner
        self._delta = delta

    def __getattr__(self, key):  # pass attributes (e.g. use_sliding) through to the block
        try:
            return super().__getattr__(key)
        except AttributeError:
            inner = dict.get(self, "inner")
            if inner is None:
                raise
            return getattr(inner, key)

    def __call__(self, x, *args, **kwargs):
        out = self.inner(x, *args, **kwargs)
        L = out.shape[1]
        return out + mx.array(self._delta[:L])[None].astype(out.dtype)


@contextlib.contextmanager
def layer_delta(model, index: int, delta: np.ndarray):
    """Temporarily replace block ``index`` in the layer list with an adding wrapper."""
    inner = model.model  # the real container: `model.layers` may be a fresh slice (pipeline_layers)
    layers = inner["layers"] if "layers" in inner else inner["h"]
    original = layers[index]
    layers[index] = _AddDelta(original, delta)
    try:
        yield
    finally:
        layers[index] = original


def greedy_recompute(model, prompt: list[int], n: int, *, index: int, delta_for, eos: int = 2) -> list[int]:
    """Greedy tokens, recomputing the whole sequence without a cache at every step.

    ``delta_for(T)`` gives the (T, D) array added to block ``index``'s output for a sequence of T.
    """
    seq = list(prompt)
    out = []
    for _ in range(n):
        with layer_delta(model, index, delta_for(len(seq))):
            logits = model(mx.array([seq]))
        tok = int(mx.argmax(logits[0, -1]).item())
        if tok == eos:
            break
        out.append(tok)
        seq.append(tok)
    return out
