"""Gradients of a scalar metric of the logits with respect to the activations at any recordable sites
(nnsight's ``.grad``, without proxies), with the activations themselves.

Mechanism: a zero additive probe of the activation's shape is installed at each site as the last
intervention there (through the engine's hooks, so positions and padding mean what they mean for
``run``), and the backend differentiates the metric with respect to the probes
(:meth:`~mlx_steer.engine.protocols.Backend.differentiate`: ``mx.value_and_grad`` on MLX, autograd on
torch). d metric / d probe is d metric / d activation; a probe of zeros leaves the forward as it is.
Interventions given by the user run before the probe, so the result is the gradient of the steered model.

    from mlx_steer.engine.gradients import gradients, logit_diff
    g = gradients(model, ["The Eiffel Tower is in"], logit_diff(paris, rome), sites=["layers.3"])
    g.gradients["layers.3"]      # (B, L, D) float32, left-padded like run's recordings
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import interventions as iv
from .activations import Activations
from .logit_positions import LogitsSpec
from .plan import as_interventions

if TYPE_CHECKING:
    from .arrays import Array
    from .model import Steerable

__all__ = ["Metric", "SiteGradients", "gradients", "logit_diff"]

Metric = Callable[[Any], Any]  # (B, L, V) backend logits -> a scalar or one value per row (B,)


def logit_diff(target: int, foil: int, *, position: int = -1) -> Metric:
    """A metric: ``logits[:, position, target] - logits[:, position, foil]`` per row (position -1 is
    each row's last token: rows are left-padded).

    Raises:
        ValueError: a token id or position that is not an int.
    """
    for name, value in (("target", target), ("foil", foil), ("position", position)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"logit_diff {name} must be an int (a token id or position), got {value!r}")
    t, f, p = int(target), int(foil), int(position)

    def metric(logits: Any) -> Any:
        return logits[:, p, t] - logits[:, p, f]

    metric.__name__ = f"logit_diff({t}, {f}, position={p})"
    return metric


@dataclass(frozen=True)
class SiteGradients:
    """What :func:`gradients` returns.

    Attributes:
        sites: The resolved site keys, in the order asked.
        activations: Per site (short or resolved keys), (B, k, D) float32 activations (after the user's interventions) at the
            returned positions.
        gradients: Per site, d metric / d activation, same shape.
        metric: The metric's value per row (B,), or a 0-d array when the metric returns a scalar.
        positions: (B, k) absolute position of each returned column per row (-1: padding).
        tokens: The prompts' token ids.
    """

    sites: tuple[str, ...]
    activations: Mapping[str, np.ndarray]
    gradients: Mapping[str, np.ndarray]
    metric: np.ndarray
    positions: np.ndarray
    tokens: list[list[int]]


def gradients(
    model: Steerable,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    metric: Metric,
    *,
    sites: str | Sequence[str],
    positions: object = "all",
    interventions: Mapping | Any = None,
    chat: bool = False,
    logits: LogitsSpec = True,
) -> SiteGradients:
    """d ``metric(logits)`` / d activation at ``sites``, with the activations, in one forward and one
    backward over the batch.

    Args:
        model: Any backend's model.
        prompts: A string, strings or token-id lists (left-padded together, as in ``run``).
        metric: ``metric(logits) -> scalar or (B,)`` on the backend's (B, L, V) logits array, written
            with indexing and arithmetic both backends share (see :func:`logit_diff`). Per-row
            values are summed before differentiating: rows are independent, so each row's gradient
            is that of its own value.
        sites: Site keys (``layers.3``, ``layers.3:input``, ``layers.3.mlp``...).
        positions: ``"all"`` (each row's padded length), or an absolute index or list of indices
            (negative: from each row's end) kept in the result.
        interventions: Active during the run (as for ``run``): the gradient of the steered model.
        chat: Wrap each prompt as a chat user turn.
        logits: The logits the metric sees, as for ``run``: ``True`` (B, L, V), or e.g. ``"last"``
            (B, 1, V), which spares the unembedding (and its backward) elsewhere.

    Returns:
        A :class:`SiteGradients`.

    Raises:
        ValueError: unknown sites, a metric that is not a scalar or (B,), non-finite metric values,
            a model sharded over ranks, or a site the gradient does not reach (an intervention
            that detaches). The model is left as it was.
    """
    if model.distributed is not None:
        raise ValueError(f"gradients need the whole model in one process; this one is sharded over ranks "
                         f"({model.distributed})")
    if not callable(metric):
        raise ValueError(f"metric must be a callable of the (B, L, V) logits, got {type(metric).__name__}")
    keys = _site_keys(model, sites)
    tokens = model.prompts.encode_batch(prompts, chat=chat)
    B, L = len(tokens), max(len(t) for t in tokens)
    cols = _columns(positions, [len(t) for t in tokens], L)  # checked before anything runs
    user = _user_interventions(model, interventions, rows=B)
    widths = _widths(model, keys, tokens[0][:1])
    seen: dict[str, list] = {}

    def run(probes: list[Array]) -> tuple[Array, Any]:
        spec = {k: list(v) for k, v in user.items()}
        for key, probe in zip(keys, probes):
            spec.setdefault(key, []).append(iv.custom(_probe(key, probe, seen, model.backend.state)))
        out = model.run(tokens, interventions=spec, check_finite=False, logits=logits).logits
        value = metric(out)
        shape = tuple(getattr(value, "shape", ()) or ())
        if not model.xp.is_array(value) or shape not in ((), (B,)):
            got = f"shape {shape}" if model.xp.is_array(value) else type(value).__name__
            raise ValueError(f"the metric must return a scalar or one value per row ({B},) as a "
                             f"{model.xp.array_type}, got {got}")
        total = value if shape == () else value.sum()
        return total, value

    zeros = [np.zeros((B, L, widths[k]), dtype=np.float32) for k in keys]
    _, value, grads = model.backend.differentiate(run, zeros)
    _check_ran(model, [k for k in keys if k not in seen])
    cut = [k for k, g in zip(keys, grads) if g is None]
    if cut:
        raise ValueError(f"the gradient does not reach sites {cut}: something between them and the metric "
                         "leaves autograd (e.g. a custom intervention or metric going through numpy)")
    values = model.to_numpy(value)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"the metric is not finite ({values.tolist()}); a gradient of NaN or inf means nothing")
    rows = np.arange(B)[:, None]
    pad = np.array([L - len(t) for t in tokens])[:, None]
    take = np.where(cols >= 0, cols + pad, 0)
    acts = {k: np.where(cols[..., None] >= 0, _assembled(model, seen[k], zeros[i].shape)[rows, take], 0.0)
            for i, k in enumerate(keys)}
    grad = {k: np.where(cols[..., None] >= 0, g[rows, take], 0.0).astype(np.float32) for k, g in zip(keys, grads) if g is not None}
    return SiteGradients(tuple(keys), _mapping(acts, model.resolve_key), _mapping(grad, model.resolve_key),
                         values, cols, tokens)


def _mapping(arrays: dict[str, np.ndarray], resolve: Callable[[str], str]) -> Activations:
    """Arrays by site, read with short or resolved keys."""
    return Activations({k: functools.partial(lambda a: a, a) for k, a in arrays.items()}, resolve)


def _probe(key: str, probe: Array, seen: dict[str, list], state: Any) -> Callable[[Array], Array]:
    """What adds the probe at one site: the probe's rows and (right-aligned: rows are left-padded)
    columns of the forward that runs, whole or row by row (a backend whose padded batches are wrong)."""
    B, L, _ = probe.shape

    def add(h: Array) -> Array:
        rows = np.asarray(state.rows)
        n = h.shape[1]
        if n > L or len(rows) != h.shape[0] or rows.max() >= B:
            raise ValueError(f"site {key!r} ran with shape {tuple(h.shape)}, not within the {tuple(probe.shape)} "
                             "its probe was made for (does the site run more than once per forward?)")
        part = probe if len(rows) == B and n == L else probe[state.xp.index(rows, like=probe)][:, L - n:]
        seen.setdefault(key, []).append((rows, h))
        return h + state.xp.astype(part, h)

    return add


def _assembled(model: Steerable, pieces: list, shape: tuple[int, ...]) -> np.ndarray:
    """The (B, L, D) activations from the pieces the probes saw (rows, right-aligned columns)."""
    out = np.zeros(shape, dtype=np.float32)
    for rows, h in pieces:
        out[rows, shape[1] - h.shape[1]:] = model.to_numpy(h)
    return out


def _site_keys(model: Steerable, sites: str | Sequence[str]) -> list[str]:
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise ValueError("sites is empty; name at least one site (e.g. 'layers.0')")
    keys = [model.resolve_key(s) for s in names]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"sites {dup} are named more than once")
    return keys


def _user_interventions(model: Steerable, interventions: Mapping | Any, *, rows: int) -> dict[str, list]:
    spec = as_interventions(interventions, rows=rows) or {}
    out: dict[str, list] = {}
    for site, item in spec.items():
        out.setdefault(model.resolve_key(str(site)), []).extend(iv.as_intervention_list(item, site=str(site)))
    return out


def _widths(model: Steerable, keys: list[str], first_token: list[int]) -> dict[str, int]:
    """Each site's activation width, from a one-token recording (a module's size is not always
    known before it runs)."""
    layers = set(model.layer_paths)
    unknown = [k for k in keys if model.resolve(k).path not in layers]  # a decoder layer's in and out: hidden size
    acts = model.run([first_token], record=unknown, logits=False).activations if unknown else {}
    _check_ran(model, [k for k in unknown if acts[k] is None])
    return {k: int(acts[k].shape[-1]) if k in unknown else model.hidden_size for k in keys}


def _check_ran(model: Steerable, idle: list[str]) -> None:
    if idle:
        raise ValueError(f"sites {idle} do not run in a forward (a container, not a module that computes); "
                         f"name modules that run, e.g. {model.layer_paths[0]}")


def _columns(positions: object, lengths: list[int], L: int) -> np.ndarray:
    """(B, k) absolute positions per row; -1 where a row has no such position (padding)."""
    B = len(lengths)
    if isinstance(positions, str) and positions == "all":
        return np.array([[p - (L - n) for p in range(L)] for n in lengths]).clip(min=-1)
    items = [positions] if isinstance(positions, (int, np.integer)) else positions
    if (isinstance(positions, bool) or not isinstance(items, (list, tuple)) or not items
            or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in items)):
        raise ValueError(f"positions must be 'all', an int or a non-empty list of ints, got {positions!r}")
    out = np.empty((B, len(items)), dtype=np.int64)
    for b, n in enumerate(lengths):
        for j, p in enumerate(items):
            q = int(p) + n if p < 0 else int(p)
            if not 0 <= q < n:
                raise ValueError(f"position {p} out of range for a prompt of {n} tokens; valid: {-n}..{n - 1}")
            out[b, j] = q
    return out
