"""Analysis of steering directions, for either backend: what a direction writes to the vocabulary,
how large it is next to the residual stream, what a generation reads along it, how long steering
lasts once released, and a layer x strength sweep of effect against fluency cost.

Everything here is numpy. A backend model provides (both SteerableModel and the torch backend):

- ``run(prompts, record=, record_positions=, logits=, interventions=, chat=)`` -> a trace with
  ``activations[site]`` (B, T, D), ``logits`` (B, L, V), ``padding`` (left padding per row);
- ``stream_generate(token_ids, max_tokens=, interventions=, record=, record_positions=,
  hooks_out=, logits_processors=, ...)`` yielding responses with ``text``, ``token``,
  ``finish_reason``; ``hooks_out[0].activations`` holds what was recorded;
- ``unembed(vectors (K, D), *, final_norm=False)`` -> float32 (K, V) logits, no forward pass;
- ``ban_tokens_processor(ids)`` (a logits processor) and ``eos_token_ids``;
- ``encode``, ``resolve``, ``to_numpy``, ``tokenizer``, ``hidden_size``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import interventions as iv
from . import similarity
from .positions import Positions

METRICS = ("logit_diff", "projection")


# -- directions ------------------------------------------------------------------------------
def _is_vector_set(value: object) -> bool:
    """A SteeringVector (duck-typed: anything with per-site ``directions``)."""
    return hasattr(value, "directions") and isinstance(getattr(value, "directions"), Mapping)


def _site_key(model: Any, site: object, hook_point: str | None = None) -> str:
    """Canonical key of ``site``; a bare path takes ``hook_point`` (a SteeringVector's)."""
    s = model.resolve(site)
    if hook_point is not None and isinstance(site, str) and ":" not in site:
        s = dataclasses.replace(s, point=hook_point)
    return s.key


def _dirs(model: Any, vector: object) -> dict[str, object]:
    """A SteeringVector's directions keyed by resolved module path."""
    return {model.resolve_path(k): v for k, v in vector.directions.items()}


def _pick(model: Any, vector: object, site: object | None) -> tuple[str | None, np.ndarray]:
    """(site key or None, float32 (D,) direction) from a SteeringVector + site or a raw array."""
    if not _is_vector_set(vector):
        d = iv.as_vector(vector, what="direction")
        return (None if site is None else _site_key(model, site)), d
    dirs, point = _dirs(model, vector), getattr(vector, "hook_point", "output")
    if site is None:
        if len(dirs) != 1:
            raise ValueError(f"this SteeringVector has {len(dirs)} sites; pass site= one of {', '.join(dirs)}")
        path = next(iter(dirs))
        return _site_key(model, path, point), iv.as_vector(dirs[path], what=f"direction at {path}")
    path = model.resolve(site).path
    if path in dirs:
        return _site_key(model, site, point), iv.as_vector(dirs[path], what=f"direction at {path}")
    raise ValueError(f"SteeringVector has no direction at {path!r} ({site!r}); it has: {', '.join(dirs)}")


def _unit(d: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(d))
    if n == 0.0:
        raise ValueError("direction has zero norm")
    return (d / n).astype(np.float32)


def _prompt_list(prompts: str | Sequence[str]) -> list:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("empty prompt list; pass at least one prompt")
    return items


def _batches(items: list, batch_size: int) -> list[list]:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


# -- vocabulary ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenReport:
    """Tokens a direction promotes and demotes through the unembedding.

    Attributes:
        boosted: ``(token, id, logit)`` with the highest logits, best first.
        suppressed: ``(token, id, logit)`` with the lowest logits, lowest first.
        site: The site the direction came from (None for a raw array).
        final_norm: Whether the final norm was applied before the unembedding.
    """

    boosted: tuple[tuple[str, int, float], ...]
    suppressed: tuple[tuple[str, int, float], ...]
    site: str | None = None
    final_norm: bool = False

    def to_text(self) -> str:
        w = max(len(repr(t)) for t, _, _ in self.boosted + self.suppressed)
        lines = [f"{'boosted':<{w + 19}}suppressed"]
        for (a, ia, sa), (b, ib, sb) in zip(self.boosted, self.suppressed):
            lines.append(f"{repr(a):<{w}} {ia:>6} {sa:+9.3f}  {repr(b):<{w}} {ib:>6} {sb:+9.3f}")
        return "\n".join(lines)


def top_tokens(
    model: Any, vector: object, *, site: object | None = None, k: int = 10, final_norm: bool = False
) -> TokenReport:
    """The ``k`` tokens whose logits a direction raises most and lowers most (unembedding only).

    Args:
        model: A backend model.
        vector: A raw (D,) direction, or a SteeringVector (``site`` picks the direction; optional
            when it has one).
        k: Tokens per list.
        final_norm: Apply the final norm first (a logit-lens read of the direction).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    key, d = _pick(model, vector, site)
    logits = np.asarray(model.unembed(d[None], final_norm=final_norm), dtype=np.float32)[0]
    n = _tokenizer_size(model.tokenizer)
    if n is not None:  # padded vocabularies have rows no token decodes to
        logits = logits[: min(n, logits.shape[0])]
    order = np.argsort(-logits, kind="stable")
    k = min(k, logits.shape[0])

    def rows(ids: np.ndarray) -> tuple:
        return tuple((model.tokenizer.decode([int(i)]), int(i), float(logits[i])) for i in ids)

    return TokenReport(rows(order[:k]), rows(order[::-1][:k]), key, final_norm)


def _tokenizer_size(tok: Any) -> int | None:
    for t in (tok, getattr(tok, "_tokenizer", None)):
        try:
            return len(t)
        except TypeError:
            continue
    return None


def _token_ids(model: Any, tokens: object, what: str) -> list[int]:
    """Ids from ints or strings (each string must be exactly one token)."""
    items = [tokens] if isinstance(tokens, (str, int, np.integer)) else list(tokens or [])
    if not items:
        raise ValueError(f"{what} is empty; give token strings or ids")
    ids = []
    for t in items:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            ids.append(int(t))
            continue
        enc = list(model.tokenizer.encode(t, add_special_tokens=False))
        if len(enc) != 1:
            raise ValueError(f"{what}: {t!r} is {len(enc)} tokens {enc}; give single tokens or ids")
        ids.append(int(enc[0]))
    return ids


# -- norms -----------------------------------------------------------------------------------
class NormRow(NamedTuple):
    site: str
    vector_norm: float
    mean_residual_norm: float
    ratio: float  # vector_norm / mean_residual_norm


def _mean_norms(model: Any, keys: list[str], prompts: list, batch_size: int, chat: bool) -> dict[str, float]:
    """Mean L2 norm of each site's activation over every real (unpadded) token of ``prompts``."""
    total = {k: 0.0 for k in keys}
    count = 0
    for chunk in _batches(prompts, batch_size):
        tr = model.run(chunk, record=keys, record_positions="all", logits=False, chat=chat)
        for i, k in enumerate(keys):
            norms = np.linalg.norm(model.to_numpy(tr.activations[k]).astype(np.float64), axis=-1)
            real = np.arange(norms.shape[1])[None, :] >= np.asarray(tr.padding)[:, None]
            total[k] += float(norms[real].sum())
            count += int(real.sum()) if i == 0 else 0
    return {k: total[k] / count for k in keys}


def norm_profile(
    model: Any, vector: object, prompts: str | Sequence[str], *, batch_size: int = 16, chat: bool = False
) -> list[NormRow]:
    """Each direction's norm next to the mean residual norm at its site on ``prompts``.

    The mean is over every real token of every prompt, so a strength can be given relative to
    the stream it is added to (see :func:`relative_scale`).
    """
    if not _is_vector_set(vector):
        raise ValueError(f"norm_profile takes a SteeringVector, got {type(vector).__name__}")
    point = getattr(vector, "hook_point", "output")
    dirs = {_site_key(model, path, point): d for path, d in _dirs(model, vector).items()}
    means = _mean_norms(model, list(dirs), _prompt_list(prompts), batch_size, chat)
    norms = {k: float(np.linalg.norm(np.asarray(d, dtype=np.float64))) for k, d in dirs.items()}
    ratios = similarity.norm_profile(norms, means)
    return [NormRow(k, norms[k], means[k], ratios[k]) for k in dirs]


def relative_scale(
    model: Any, site: object, vector: object, prompts: str | Sequence[str], fraction: float,
    *, batch_size: int = 16, chat: bool = False,
) -> float:
    """The scale ``s`` with ``s * |v| = fraction * mean residual norm`` at ``site`` on ``prompts``."""
    key, d = _pick(model, vector, site)
    mean = _mean_norms(model, [key], _prompt_list(prompts), batch_size, chat)[key]
    return float(fraction) * mean / float(np.linalg.norm(d.astype(np.float64)))


# -- monitoring during generation ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Monitor:
    """A generation and, per generated token, the projection of ``site`` onto a unit direction.

    ``projections[i]`` is read at absolute position ``prompt_len - 1 + i``: the position whose
    logits produced token ``i`` (the last prompt token for the first one). It is the state the
    model was in when it chose the token, and what a ``"last"`` intervention acts on for it.
    """

    text: str
    tokens: tuple[int, ...]
    projections: np.ndarray
    site: str
    prompt_len: int
    finish_reason: str | None

    @property
    def positions(self) -> np.ndarray:
        return self.prompt_len - 1 + np.arange(len(self.tokens))


@dataclass(frozen=True, eq=False)
class Persistence(Monitor):
    """A :class:`Monitor` of a generation steered for its first ``steer_tokens`` tokens."""

    steer_tokens: int = 0

    @property
    def steered(self) -> np.ndarray:
        """Per token: whether it was produced under steering."""
        return np.arange(len(self.tokens)) < self.steer_tokens

    @property
    def steered_phase(self) -> tuple[int, ...]:
        return self.tokens[: self.steer_tokens]

    @property
    def free_phase(self) -> tuple[int, ...]:
        """Tokens generated after steering stopped."""
        return self.tokens[self.steer_tokens :]


def _monitored(model: Any, ids: list[int], key: str, unit: np.ndarray, **gen: Any) -> dict:
    hooks_out: list = []
    text, tokens, finish = [], [], None
    for r in model.stream_generate(ids, record=[key], record_positions="last", hooks_out=hooks_out, **gen):
        text.append(r.text)
        finish = r.finish_reason
        if r.finish_reason != "stop":  # the EOS token itself is not part of the text
            tokens.append(int(r.token))
    # row i = the last prompt token, then each fed token: row i produced token i
    acts = model.to_numpy(hooks_out[0].activations[key])[0]
    if acts.shape[0] < len(tokens):
        raise RuntimeError(f"recorded {acts.shape[0]} positions for {len(tokens)} generated tokens")
    proj = similarity.project(acts[: len(tokens)], unit)
    return dict(text="".join(text), tokens=tuple(tokens), projections=proj, site=key,
                prompt_len=len(ids), finish_reason=finish)


def _direction_for(model: Any, site: object, direction: object) -> tuple[str, np.ndarray]:
    key, d = _pick(model, direction, site)
    return key or _site_key(model, site), _unit(d)


def projection_monitor(
    model: Any,
    prompt: str | Sequence[int],
    *,
    site: object,
    direction: object,
    max_tokens: int = 64,
    interventions: Mapping | Any = None,
    chat: bool = False,
    system: str | None = None,
    **gen_kwargs: Any,
) -> Monitor:
    """Generate and read, per token, ``site``'s activation projected on ``direction`` (unit).

    Args:
        site: Where to read, e.g. ``"layers.6"``.
        direction: A (D,) array, or a SteeringVector holding a direction at ``site``.
        interventions: Steering during the generation (dict or SteeringVector).
        gen_kwargs: Other ``stream_generate`` options (``temp``, ``seed``...).
    """
    key, unit = _direction_for(model, site, direction)
    ids = model.encode(prompt, chat=chat, system=system)
    return Monitor(**_monitored(model, ids, key, unit, max_tokens=max_tokens,
                                interventions=interventions, **gen_kwargs))


def persistence_run(
    model: Any,
    prompt: str | Sequence[int],
    *,
    steer_tokens: int,
    free_tokens: int,
    site: object,
    vector: object = None,
    scale: float = 1.0,
    interventions: Mapping | None = None,
    direction: object = None,
    suppress_eos: bool = False,
    steer_prompt: bool = False,
    chat: bool = False,
    system: str | None = None,
    **gen_kwargs: Any,
) -> Persistence:
    """Steer the first ``steer_tokens`` generated tokens, then generate ``free_tokens`` unsteered,
    in one generation (the KV cache keeps the steered past), monitoring ``site`` along the way.

    Steering acts on absolute positions ``[P - 1, P - 1 + steer_tokens)`` of a ``P``-token prompt
    (from 0 when ``steer_prompt``): position ``P - 1 + i`` produces token ``i``, so exactly tokens
    ``0 .. steer_tokens - 1`` are chosen under steering — the same tokens as steering with
    ``positions="last"`` for the whole generation — and every later token is chosen from
    unsteered positions that attend to the steered ones.

    Args:
        vector: A SteeringVector (added at its sites with ``scale``), or a (D,) array added at ``site``.
        interventions: Instead of ``vector``, a ``{site: intervention}`` dict; their positions
            must be ``"all"`` (they are replaced by the steering window).
        site: Where to read projections.
        direction: Direction to project on; defaults to ``vector``'s direction at ``site``.
        suppress_eos: Forbid EOS so both phases run to full length.
        gen_kwargs: Other ``stream_generate`` options (``temp``, ``seed``, ``logits_processors``...).

    Returns:
        A :class:`Persistence`; ``steered`` tells the phases apart.
    """
    for name, n in (("steer_tokens", steer_tokens), ("free_tokens", free_tokens)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    if steer_tokens + free_tokens < 1:
        raise ValueError("steer_tokens + free_tokens must be >= 1")
    if (vector is None) == (interventions is None):
        raise ValueError("give exactly one of vector= or interventions=")
    if direction is None:
        if vector is None:
            raise ValueError("direction= is needed with interventions= (no vector to project on)")
        direction = vector
    key, unit = _direction_for(model, site, direction)
    ids = model.encode(prompt, chat=chat, system=system)
    if vector is not None:
        if _is_vector_set(vector):
            interventions = vector.to_interventions(scale=scale)
        else:
            interventions = {key: iv.add_vector(vector, scale=scale)}
    spec = None
    if steer_tokens:
        window = Positions.window(0 if steer_prompt else len(ids) - 1, len(ids) - 1 + steer_tokens)
        spec = _reposition(interventions, window)
    processors = list(gen_kwargs.pop("logits_processors", None) or [])
    if suppress_eos:
        processors.append(model.ban_tokens_processor(sorted(model.eos_token_ids)))
    out = _monitored(model, ids, key, unit, max_tokens=steer_tokens + free_tokens,
                     interventions=spec, logits_processors=processors, **gen_kwargs)
    return Persistence(**out, steer_tokens=steer_tokens)


def _reposition(spec: Mapping, positions: Positions) -> dict:
    out = {}
    for site, value in spec.items():
        items = []
        for it in iv.as_intervention_list(value, site=str(site)):
            if isinstance(it, iv.AddVector) and it.front_aligned:
                raise ValueError(f"front-aligned tensor at {site!r} sets its own positions; it cannot be windowed")
            if it.positions.kind != "all":
                raise ValueError(
                    f"intervention at {site!r} has positions {it.positions}; persistence_run sets the "
                    "positions itself, give interventions with positions='all'"
                )
            items.append(dataclasses.replace(it, positions=positions))
        out[site] = items
    return out


# -- layer x strength sweep ------------------------------------------------------------------
class SweepRow(NamedTuple):
    layer: int | str
    strength: float
    behaviour: float
    kl: float


@dataclass(frozen=True)
class SweepResult:
    """Rows ``(layer, strength, behaviour, kl)`` of :func:`sweep`, layer-major.

    Attributes:
        baseline: Behaviour of the unsteered model.
        metric: ``logit_diff`` or ``projection``.
    """

    table: tuple[SweepRow, ...]
    baseline: float
    metric: str
    layers: tuple
    strengths: tuple[float, ...]

    def grid(self, value: str = "behaviour") -> np.ndarray:
        """(layers, strengths) array of ``behaviour`` or ``kl``."""
        if value not in ("behaviour", "kl"):
            raise ValueError(f"value must be 'behaviour' or 'kl', got {value!r}")
        flat = np.array([getattr(r, value) for r in self.table], dtype=np.float64)
        return flat.reshape(len(self.layers), len(self.strengths))

    def to_text(self) -> str:
        head = ("layer", "strength", self.metric, "kl")
        rows = [(str(r.layer), f"{r.strength:g}", f"{r.behaviour:.4f}", f"{r.kl:.4f}") for r in self.table]
        w = [max(len(x) for x in col) for col in zip(head, *rows)]

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(n) for c, n in zip(cells, w))

        return "\n".join([f"baseline {self.metric}: {self.baseline:.4f}", fmt(head)] + [fmt(r) for r in rows])

    def heatmap(self, path: str | Path) -> Path:
        """Write behaviour and KL heatmaps (layers x strengths) to a PNG.

        Raises:
            ImportError: matplotlib is missing (``pip install "mlx-steer[plot]"``).
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError('SweepResult.heatmap needs matplotlib: pip install "mlx-steer[plot]"') from exc
        fig = Figure(figsize=(4 + 1.2 * len(self.strengths), 1.5 + 0.5 * len(self.layers)), layout="constrained")
        for ax, value, title in zip(fig.subplots(1, 2), ("behaviour", "kl"), (self.metric, "KL(base || steered)")):
            im = ax.imshow(self.grid(value), aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(self.strengths)), [f"{s:g}" for s in self.strengths])
            ax.set_yticks(range(len(self.layers)), [str(layer) for layer in self.layers])
            ax.set_xlabel("strength")
            ax.set_ylabel("layer")
            ax.set_title(title)
            fig.colorbar(im, ax=ax)
        path = Path(path)
        fig.savefig(path, format="png")
        return path


def sweep(
    model: Any,
    *,
    vector: object,
    layers: Sequence[int | str],
    strengths: Sequence[float],
    prompts: str | Sequence[str],
    metric: str = "logit_diff",
    target_tokens: object = None,
    contrast_tokens: object = None,
    direction: object = None,
    read_site: object = "layers.-1",
    positions: object = "all",
    batch_size: int = 16,
    chat: bool = False,
) -> SweepResult:
    """Steer one layer at a time at each strength; measure behaviour and fluency cost.

    Behaviour, averaged over prompts, at each prompt's last token: ``logit_diff`` = mean logit of
    ``target_tokens`` minus mean logit of ``contrast_tokens``; ``projection`` = ``read_site``'s
    activation projected on the unit ``direction``. Fluency cost = KL(unsteered || steered) of
    the next-token distributions, averaged over every real position of every prompt. The
    unsteered pass runs once and is reused; strength 0 is the unsteered pass.

    Args:
        vector: A SteeringVector with a direction at each layer (or a single direction, used at
            every layer), or a raw (D,) array (added at layer outputs).
        layers: Layer indices (or site paths) to steer, one at a time.
        strengths: Scales of the vector.
        prompts: Neutral text; run in left-padded batches of ``batch_size``.
        target_tokens, contrast_tokens: Token strings (one token each) or ids, for ``logit_diff``.
        direction: (D,) array (or SteeringVector) read at ``read_site``, for ``projection``.
        positions: Which positions to steer (default all).

    Raises:
        ValueError: unknown metric, missing tokens or direction, a layer the vector lacks.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    layers, strengths = list(layers), [float(s) for s in strengths]
    if not layers or not strengths:
        raise ValueError("need at least one layer and one strength")
    if not all(np.isfinite(strengths)):
        raise ValueError(f"strengths must be finite, got {strengths}")
    steer_at = {layer: _layer_direction(model, vector, layer) for layer in layers}
    read_key, unit, target, contrast = None, None, None, None
    if metric == "logit_diff":
        if target_tokens is None or contrast_tokens is None:
            raise ValueError("metric 'logit_diff' needs target_tokens and contrast_tokens")
        target = _token_ids(model, target_tokens, "target_tokens")
        contrast = _token_ids(model, contrast_tokens, "contrast_tokens")
    else:
        if direction is None:
            raise ValueError("metric 'projection' needs direction=")
        read_key, unit = _direction_for(model, read_site, direction)
    batches = _batches([model.encode(p, chat=chat) for p in _prompt_list(prompts)], batch_size)
    measure = _Measure(model, batches, read_key, unit, target, contrast)
    base_behaviour, _ = measure(None)
    rows = []
    for layer in layers:
        key, d = steer_at[layer]
        for s in strengths:
            if s == 0.0:
                rows.append(SweepRow(layer, s, base_behaviour, 0.0))
                continue
            b, kl = measure({key: iv.add_vector(d, scale=s, positions=positions)})
            rows.append(SweepRow(layer, s, b, kl))
    return SweepResult(tuple(rows), base_behaviour, metric, tuple(layers), tuple(strengths))


def _layer_direction(model: Any, vector: object, layer: int | str) -> tuple[str, np.ndarray]:
    site = f"layers.{layer}" if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) else layer
    if not _is_vector_set(vector):
        return _site_key(model, site), iv.as_vector(vector, what="steering vector")
    dirs, point = _dirs(model, vector), getattr(vector, "hook_point", "output")
    path = model.resolve(site).path
    if path in dirs:
        return _site_key(model, site, point), iv.as_vector(dirs[path], what=f"direction at {path}")
    if len(dirs) == 1:
        return _site_key(model, site, point), iv.as_vector(next(iter(dirs.values())), what="direction")
    raise ValueError(f"SteeringVector has no direction at layer {layer!r} ({path}); it has: {', '.join(dirs)}")


class _Measure:
    """Runs the prompt batches under an intervention; keeps the unsteered log-probs of the first
    (unsteered) call to score KL against."""

    def __init__(self, model, batches, read_key, unit, target, contrast):
        self.model, self.batches = model, batches
        self.read_key, self.unit, self.target, self.contrast = read_key, unit, target, contrast
        self.base: list[np.ndarray] | None = None  # per batch: (real positions, V) log-probs

    def __call__(self, spec: dict | None) -> tuple[float, float]:
        m, values, kl_sum, n_pos = self.model, [], 0.0, 0
        logprobs = []
        for b, chunk in enumerate(self.batches):
            record = [self.read_key] if self.read_key else None
            tr = m.run(chunk, interventions=spec, record=record, record_positions="last", logits=True)
            logits = m.to_numpy(tr.logits)
            if self.read_key:
                values.append(similarity.project(m.to_numpy(tr.activations[self.read_key])[:, -1], self.unit))
            else:
                values.append(self._logit_diff(logits[:, -1]))
            real = np.arange(logits.shape[1])[None, :] >= np.asarray(tr.padding)[:, None]
            lp = _log_softmax(logits[real]).astype(np.float32)  # stored like the baseline
            if self.base is None:
                logprobs.append(lp)
            else:
                base, lp = self.base[b].astype(np.float64), lp.astype(np.float64)
                kl_sum += float(np.sum(np.exp(base) * (base - lp)))
                n_pos += lp.shape[0]
        if self.base is None:
            self.base = logprobs
        behaviour = float(np.mean(np.concatenate(values)))
        return behaviour, (kl_sum / n_pos if n_pos else 0.0)

    def _logit_diff(self, last: np.ndarray) -> np.ndarray:
        V = last.shape[-1]
        bad = [t for t in self.target + self.contrast if not 0 <= t < V]
        if bad:
            raise ValueError(f"token ids {bad} out of range for a vocabulary of {V}; valid: 0..{V - 1}")
        last = last.astype(np.float64)
        return last[:, self.target].mean(-1) - last[:, self.contrast].mean(-1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
