"""Steering-vector extraction from contrast prompts, for either backend.

Activations are read in padded batches (each backend makes batches equal one-at-a-time runs),
turned into numpy, and handed to the direction-finding math in :mod:`mlx_steer.extraction.methods`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .reader import READS, ActivationReader, read_options
from .method_table import METHODS, PAIRED, Method, actadd
from ..vectors.steering_vector import SteeringVector

if TYPE_CHECKING:
    from ..distributed.group import Group

__all__ = ["READS", "extract", "extract_with_norms"]


def extract(
    model: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    sites: Sequence[str] | str,
    method: str | Method = "mean_diff",
    read: str | int = "last",
    batch_size: int = 16,
    chat: bool = False,
    system: str | None = None,
    assistant_prefix: str | None = None,
    progress: bool | None = None,
    group: Group | None = None,
) -> SteeringVector:
    """Find a steering direction per site from contrast prompts.

    Args:
        model: A SteerableModel (MLX) or TorchSteerableModel.
        positive: Prompts showing the behaviour (paired with ``negative`` for ``pca``; one for ``actadd``).
        negative: Prompts showing its opposite.
        sites: Sites to read, e.g. ``["layers.8"]`` or ``"layers.8:input"`` (one hook point).
        method: A function ``(pos (N, D), neg (M, D)) -> (D,)`` of numpy activations (one row
            per prompt, as read by ``read``), or the name of a built-in one in
            :data:`mlx_steer.extraction.method_table.METHODS`: ``mean_diff`` (CAA), ``pca`` (first PC of
            paired differences, sign toward positive), ``probe`` (logistic regression, unit
            direction), ``actadd`` (front-aligned per-position difference of one prompt pair;
            the shorter is padded with spaces). The vector's ``method`` is the name, or the
            function's ``__name__``.
        read: ``last`` token, ``mean`` over the prompt, an absolute index, or
            ``assistant_start`` (with ``chat``: the first position of the assistant turn).
        batch_size: Prompts per forward (rows of different lengths are left-padded).
        chat: Wrap each prompt as a user turn with the tokenizer's chat template.
        assistant_prefix: Text appended after the generation prompt (with ``chat``).
        progress: Show a progress bar (default: when there are more than 4 batches). Over
            several ranks only rank 0 shows it, counting every rank's prompts.
        group: Ranks to share the prompts with (data parallelism, see
            :mod:`mlx_steer.distributed`). Default: the group this process was launched into by
            ``mlx.launch`` or ``torchrun``, if any; ``LocalGroup()`` forces a single process.
            Ranks read prompts balanced by token length and all-reduce sums, so only
            ``mean_diff`` and ``pca`` run over several ranks (``actadd``, one pair, runs whole on
            each). The vector equals the single-process one (fp32 rounding) on every rank, and
            its ``extra["world_size"]`` says how many ranks took part.

    Returns:
        A SteeringVector holding one direction per resolved site, with metadata.

    Raises:
        ValueError: unknown method/read, empty or mismatched prompt lists, mixed hook points,
            ``system``/``assistant_prefix`` without ``chat``, or a zero direction (positive and
            negative prompts read the same, e.g. identical pairs), naming the site.
        TypeError: ``method`` is neither a known name nor a callable.
    """
    return extract_with_norms(
        model, positive, negative, sites=sites, method=method, read=read, batch_size=batch_size, chat=chat,
        system=system, assistant_prefix=assistant_prefix, progress=progress, group=group,
    )[0]


def extract_with_norms(
    model: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    sites: Sequence[str] | str,
    method: str | Method = "mean_diff",
    read: str | int = "last",
    batch_size: int = 16,
    chat: bool = False,
    system: str | None = None,
    assistant_prefix: str | None = None,
    progress: bool | None = None,
    group: Group | None = None,
) -> tuple[SteeringVector, dict[str, float] | None]:
    """:func:`extract`, plus how large the activations it read were: the vector and, per resolved path,
    the mean L2 norm of the activations its direction was computed from (one row per prompt, read as
    ``read`` says), from the same forward passes. ``vector.norms()[p] / read_norms[p]`` says how big
    the direction is next to the residual stream there. The norms are None for ``actadd`` and over
    several ranks (which reduce sums, not rows). Arguments and errors are :func:`extract`'s.
    """
    fn, name = _method(method)
    enc = read_options(read, chat=chat, system=system, assistant_prefix=assistant_prefix)
    if isinstance(sites, str):
        sites = [sites]
    resolved = [model.resolve(s) for s in sites]
    if not resolved:
        raise ValueError("no sites given; e.g. sites=['layers.8']")
    points = {s.point for s in resolved}
    if len(points) != 1:
        raise ValueError(f"sites mix hook points {sorted(points)}; extract one hook point at a time")
    pos, neg = list(positive), list(negative)
    if not pos or not neg:
        raise ValueError(f"need positive and negative prompts, got {len(pos)} and {len(neg)}")
    if name in PAIRED and len(pos) != len(neg):
        raise ValueError(f"method {name!r} needs paired prompts; got {len(pos)} positive and {len(neg)} negative")
    if fn is actadd and len(pos) != 1:
        raise ValueError(f"method 'actadd' takes one prompt pair, got {len(pos)}")
    keys = [s.key for s in resolved]
    if group is None:
        from ..distributed.group import launched_group

        group = launched_group(model)
    parallel = group if group is not None and group.size > 1 and fn is not actadd else None
    read_norms: dict[str, float] | None = None
    if fn is actadd:
        directions = _actadd(model, pos[0], neg[0], keys, enc)
    elif parallel is not None:
        from ..distributed.parallel_extract import parallel_directions

        directions = parallel_directions(model, name, pos, neg, keys, group=parallel, read=read,
                                         batch_size=batch_size, enc=enc, progress=progress)
    else:
        reader = ActivationReader(model, keys, read, batch_size, enc, progress, n_total=len(pos) + len(neg))
        try:
            acts = reader(pos + neg)  # one pass: batches mix both sides, grouped by length
        finally:
            reader.close()
        directions = {k: _direction(fn, name, a[: len(pos)], a[len(pos):], model.hidden_size)
                      for k, a in acts.items()}
        read_norms = {s.path: _mean_norm(acts[s.key]) for s in resolved}
    for s in resolved:
        if not np.any(directions[s.key]):
            raise ValueError(f"the {name} direction at {s.path} is zero: the positive and negative prompts read "
                             f"the same activations there (identical pairs?); nothing to steer with")
    vector = SteeringVector(
        directions={s.path: directions[s.key] for s in resolved},
        hook_point=resolved[0].point,
        model_id=getattr(model, "model_id", None),
        hidden_size=model.hidden_size,
        method=name,
        read_positions=str(read) + (" (chat)" if chat else ""),
        extra={"world_size": str(parallel.size)} if parallel is not None else {},
    )
    return vector, read_norms


def _method(method: str | Method) -> tuple[Method, str]:
    """The direction function and the name the vector records."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)} or a function (pos, neg) -> (D,)")
        return METHODS[method], method
    if not callable(method):
        raise TypeError(f"method must be one of {', '.join(METHODS)} or a function (pos, neg) -> (D,), "
                        f"got {type(method).__name__}")
    alias = next((name for name, fn in METHODS.items() if fn is method), None)
    return method, str(alias or getattr(method, "__name__", type(method).__name__))


def _direction(fn: Method, name: str, pos: np.ndarray, neg: np.ndarray, hidden: int) -> np.ndarray:
    """``fn(pos, neg)`` checked to be a finite real (D,) vector, as float32."""
    out = fn(pos, neg)
    arr = np.asarray(out)
    if arr.shape != (hidden,) or arr.dtype.kind not in "iuf":
        raise ValueError(f"method {name!r} must return a real ({hidden},) vector, "
                         f"got {type(out).__name__} of shape {arr.shape} and dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"method {name!r} returned non-finite values (NaN or inf)")
    return arr.astype(np.float32)


def _mean_norm(rows: np.ndarray) -> float:
    """Mean L2 norm of (N, D) rows, in float64."""
    return float(np.linalg.norm(rows.astype(np.float64), axis=-1).mean())


def _actadd(model, pos: str, neg: str, keys: list[str], enc: dict) -> dict[str, np.ndarray]:
    """Per-position difference of one pair; the shorter prompt is right-padded with spaces."""
    a, b = model.encode(pos, **enc), model.encode(neg, **enc)
    space = model.encode(" ", chat=False)[-1]
    n = max(len(a), len(b))
    a, b = a + [space] * (n - len(a)), b + [space] * (n - len(b))
    tr = model.run([a] if a == b else [a, b], record=keys, logits=False)  # identical: read once, exactly zero
    return {k: actadd(model.to_numpy(tr.activations[k])[0], model.to_numpy(tr.activations[k])[-1]) for k in keys}
