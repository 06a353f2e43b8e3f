"""Attention patterns of an mlx-lm model, recorded only when asked.

mlx-lm's attention modules call their model file's ``scaled_dot_product_attention`` (imported from
``mlx_lm.models.base``), a fused kernel that never forms the weights. While patterns are asked
for, that module-level name is replaced by a wrapper that also computes ``softmax(q kᵀ · scale +
mask)`` in float32 (key heads repeated for grouped-query attention) and hands it on, then calls the
original kernel, so the model's numbers are unchanged. gemma2 computes attention itself (logit
soft-capping): there the model file's ``mx`` is replaced by a view of ``mlx.core`` whose
``softmax`` hands its result on, so the pattern is the very one the model uses.

A wrapper records only inside the attention module of an asked layer of this model (an entry on
that module says which layer runs, in this thread); anywhere else it is the original function.
Replacements are counted per model file and undone when the last recording ends.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import mlx.core as mx

from ...engine.attention_sites import attention_path
from . import hooks as hk

Sink = Callable[[int, mx.array], None]
SUPPORTED = ("model files that call mlx_lm.models.base.scaled_dot_product_attention (llama, qwen2, phi3, gpt2...), "
             "and gemma2")

_running = threading.local()  # .current: (layer, sink) while an asked attention module runs here
_lock = threading.Lock()
_installed: dict[str, list] = {}  # model file -> [attribute name, original, count]


def attach_patterns(modules: dict[str, Any], layer_paths: Sequence[str], layers: Sequence[int],
                    sink: Sink, *, model_type: str | None) -> Callable[[], None]:
    """Until undone, each forward hands ``sink(layer, pattern)`` the (B, H, L_q, L_k) float32
    attention weights of every layer in ``layers``; returns what undoes it.

    Raises:
        ValueError: an architecture whose attention is computed some other way (named), or a
            quantized KV cache or attention sinks at run time.
    """
    attns = {i: modules[attention_path(modules, layer_paths[i])] for i in layers}
    files = {type(m).__module__ for m in attns.values()}
    for f in files:
        _kind(sys.modules[f], model_type)  # refuse before anything is changed
    undo: list[Callable[[], None]] = []
    try:
        for f in sorted(files):
            _install(f)
            undo.append(functools.partial(_uninstall, f))
        for i, m in attns.items():
            entry = _layer_entry(i, sink)
            hk.attach(m, entry)
            undo.append(functools.partial(hk.detach, m, entry))
    except BaseException:
        for u in reversed(undo):
            u()
        raise

    def remove() -> None:
        _running.current = None
        for u in reversed(undo):
            u()

    return remove


def _kind(module: ModuleType, model_type: str | None) -> str:
    if module.__name__.rpartition(".")[2] == "gemma2":
        return "softmax"
    if callable(getattr(module, "scaled_dot_product_attention", None)):
        return "sdpa"
    raise ValueError(f"attention patterns are not supported for the {model_type or module.__name__} architecture "
                     f"(its attention is computed in {module.__name__}); supported: {SUPPORTED}")


def _layer_entry(layer: int, sink: Sink) -> hk.Entry:
    def before(args: tuple, kwargs: dict) -> tuple:
        _running.current = (layer, sink)
        return args

    def after(out: Any) -> Any:
        _running.current = None
        return out

    return hk.Entry(before=before, after=after)


def _install(name: str) -> None:
    module = sys.modules[name]
    with _lock:
        slot = _installed.get(name)
        if slot is None:
            if _kind(module, None) == "softmax":
                slot = ["mx", module.mx, 0]
                module.mx = _RecordingMx()  # type: ignore[attr-defined]
            else:
                original = module.scaled_dot_product_attention
                slot = ["scaled_dot_product_attention", original, 0]
                module.scaled_dot_product_attention = _wrap_sdpa(original)  # type: ignore[attr-defined]
            _installed[name] = slot
        slot[2] += 1


def _uninstall(name: str) -> None:
    with _lock:
        slot = _installed[name]
        slot[2] -= 1
        if slot[2] == 0:
            setattr(sys.modules[name], slot[0], slot[1])
            del _installed[name]


def _current() -> tuple[int, Sink] | None:
    return getattr(_running, "current", None)


def _wrap_sdpa(original: Callable) -> Callable:
    def scaled_dot_product_attention(queries: mx.array, keys: Any, values: Any, cache: Any, scale: float,
                                     mask: Any, sinks: mx.array | None = None) -> mx.array:
        asked = _current()
        if asked is not None:
            if hasattr(cache, "bits"):
                raise ValueError("attention patterns cannot be read from a quantized KV cache "
                                 f"({type(cache).__name__}); generate without kv_bits")
            if sinks is not None:
                raise ValueError("attention patterns are not supported for attention with sinks")
            asked[1](asked[0], pattern(queries, keys, scale, mask))
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    return scaled_dot_product_attention


def pattern(queries: mx.array, keys: mx.array, scale: float, mask: Any) -> mx.array:
    """softmax(q kᵀ · scale + mask) in float32, (B, H, L_q, L_k); ``mask`` as mlx-lm passes it:
    None, ``"causal"``, a boolean array (True: attend) or an additive one."""
    H, Hkv = queries.shape[1], keys.shape[1]
    k = mx.repeat(keys, H // Hkv, axis=1) if H != Hkv else keys  # query head h reads key head h // (H / Hkv)
    scores = (queries.astype(mx.float32) * scale) @ k.astype(mx.float32).swapaxes(-1, -2)
    qL, kL = scores.shape[-2:]
    if isinstance(mask, str):
        mask = mx.arange(kL - qL, kL)[:, None] >= mx.arange(kL)[None]
    if mask is not None:
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(mx.float32).min)
        else:
            scores = scores + mask.astype(mx.float32)
    return mx.softmax(scores, axis=-1, precise=True)


class _RecordingMx:
    """``mlx.core`` for a model file that computes attention itself (gemma2): ``softmax`` inside an
    asked attention module hands its (B, H, L_q, L_k) result on (grouped heads merged)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(mx, name)

    def softmax(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        out = mx.softmax(x, *args, **kwargs)
        asked = _current()
        if asked is not None:
            B, qL, kL = out.shape[0], out.shape[-2], out.shape[-1]
            asked[1](asked[0], out.astype(mx.float32).reshape(B, -1, qL, kL))
        return out
