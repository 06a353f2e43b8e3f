"""Calibrate a steering vector: per site, the coefficient at which steering costs a chosen KL budget.

What is measured, exactly:

1. **Rollouts.** The unsteered model continues each neutral prompt (chat user turns by default) for
   ``rollout_tokens`` tokens: greedy at ``temp=0`` (the default), else sampled with ``seed``. A
   rollout that ends early (EOS) is kept as far as it got.
2. **Scored positions.** In each sequence *prompt + rollout* (``P + G`` tokens), the positions
   ``P-1 .. P+G-1``: the next-token distributions the rollout's tokens were drawn from, and the one
   after its last token.
3. **Per-token KL.** One teacher-forced forward of those sequences unsteered and one steered
   (``coefficient * direction`` added at the site alone, at ``positions``, every position by default)
   give ``KL(p_unsteered || p_steered)`` in nats at each scored position (a float64 log-softmax of
   the logits over the whole vocabulary). Steering changes the distributions, never the tokens.
4. **Statistic.** The mean over every scored token of every prompt, or a percentile ``"pNN"`` of them.

Search, per site (sites are calibrated one at a time, each steered alone, which is how ``evaluate``
and ``sweep`` steer a layer): the candidates of one step are rows of the same batched forwards
(one row per prompt and candidate, each row with its own steering). The first step tries a
log-spaced grid around ``|residual| / |direction|``, widening it until the target is bracketed;
the bracket is the smallest candidate reaching the target and the largest one below it (so where
the KL is not monotone in the scale, the first crossing from 0 is the one kept). Each later step
tries the log-log interpolation inside the bracket plus evenly log-spaced points, and narrows the
bracket, until a candidate is within ``rtol`` of the target. The coefficient returned is the
measured candidate closest to the target (its KL is stored as ``achieved_kl``). Everything is
deterministic for a seed: greedy rollouts, a fixed candidate sequence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
from tqdm import tqdm

from ..engine import interventions as iv
from ..engine.limits import check_seed
from ..engine.positions import Positions, as_positions
from ..vectors.calibration import Calibration, check_statistic
from ..vectors.steering_vector import SteeringVector
from .kl_rollouts import Rollouts, kl_statistic, make_rollouts, token_kls
from .norms import norm_profile
from .vector_inputs import site_key

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["NEUTRAL_PROMPTS", "calibrate", "kl_at"]

# everyday requests with no stance, emotion or persona: what steering should leave alone
NEUTRAL_PROMPTS = (
    "Describe how to make a cup of tea.",
    "What is the capital of France?",
    "Explain how a bicycle works.",
    "List three common kitchen utensils.",
    "Write a short description of a city park.",
    "How many days are there in a leap year?",
    "Summarize the water cycle in two sentences.",
    "What does a librarian do?",
    "Give directions for planting a tomato seed.",
    "Explain what a prime number is.",
    "Describe the weather in autumn.",
    "What are the primary colors?",
    "How does a train differ from a bus?",
    "Write a sentence about a wooden table.",
    "Explain how to fold a paper airplane.",
    "What is the boiling point of water at sea level?",
)
_GRID = tuple(4.0 ** k for k in range(-4, 4))  # first step: 1/256 .. 64 times the starting scale
_INTERIOR = 3  # evenly log-spaced points per refining step, besides the interpolated one


def calibrate(
    model: Steerable,
    vector: SteeringVector,
    *,
    target_kl: float = 0.5,
    statistic: str = "mean",
    sites: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    rollout_tokens: int = 16,
    positions: str | dict | Positions = "all",
    chat: bool = True,
    system: str | None = None,
    temp: float = 0.0,
    seed: int = 0,
    rtol: float = 0.02,
    max_steps: int = 12,
    batch_size: int = 32,
    progress: bool = False,
) -> SteeringVector:
    """The vector with a :class:`~mlx_steer.vectors.calibration.Calibration`: per site, the coefficient
    whose steering reaches ``target_kl`` (see the module's docstring for what is measured).

    Args:
        model: A steerable model of either backend.
        vector: The SteeringVector to calibrate (its sites are checked against the model).
        target_kl: The budget in nats (> 0).
        statistic: ``"mean"`` or a percentile ``"pNN"`` (e.g. ``"p90"``) of the per-token KLs.
        sites: Which of the vector's sites to calibrate (default all; each on its own).
        prompts: Neutral prompts (default :data:`NEUTRAL_PROMPTS`).
        rollout_tokens: Tokens the unsteered model generates per prompt.
        positions: Where the calibration steers (``"all"``, ``"last"``, ``"prompt"``, ``"generated"``...).
        chat: Ask the prompts as chat user turns (False: plain text, for base models).
        system: A system prompt for those turns.
        temp: The rollouts' sampling temperature (0: greedy).
        seed: The rollouts' sampling seed (0..2**64-1).
        rtol: Stop once a candidate's statistic is within this relative distance of the target.
        max_steps: At most this many batched steps per site (widening and narrowing).
        batch_size: Rows per forward.
        progress: Show a progress bar of the steered rows measured (on stderr).

    Returns:
        ``vector`` with ``calibration`` set (replacing any earlier one; sites not calibrated have no
        coefficient).

    Raises:
        ValueError: a bad option (naming it and what is valid), a site the vector or model lacks, a
            zero direction, or a target no scale reaches (naming the largest KL measured and where);
            the model is left untouched.
    """
    if not isinstance(vector, SteeringVector):
        raise ValueError(f"calibrate takes a SteeringVector (wrap a raw array in one), got {type(vector).__name__}")
    statistic = check_statistic(statistic)
    for name, value in (("target_kl", target_kl), ("rtol", rtol), ("temp", temp)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or value < 0 or (value == 0 and name != "temp"):
            raise ValueError(f"{name} must be a finite number {'>= 0' if name == 'temp' else '> 0'}, got {value!r}")
    for name, value in (("rollout_tokens", rollout_tokens), ("max_steps", max_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    seed = check_seed(seed)
    chosen = list(vector.sites) if sites is None else [model.resolve_path(s) for s in sites]
    unknown = [s for s in chosen if s not in vector.directions]
    if unknown or not chosen:
        raise ValueError(f"no direction at {', '.join(unknown) or '(no sites given)'}; the vector has: {', '.join(vector.sites)}")
    keys = {s: site_key(model, s, vector.hook_point) for s in chosen}
    zero = [s for s in chosen if not np.any(vector[s])]
    if zero:
        raise ValueError(f"cannot calibrate a zero direction at {', '.join(zero)}")
    texts = list(NEUTRAL_PROMPTS if prompts is None else prompts)
    if isinstance(prompts, str) or not texts or not all(isinstance(p, str) and p for p in texts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    iv.add_vector(np.zeros(model.hidden_size, np.float32), positions=positions)  # checks the positions

    ro = make_rollouts(model, texts, rollout_tokens=rollout_tokens, chat=chat, system=system, temp=temp, seed=seed,
                       batch_size=batch_size)
    start = {row.site: row.mean_residual_norm / max(row.vector_norm, 1e-30)
             for row in norm_profile(model, vector.select(chosen), cast(Sequence[str], ro.tokens),  # token ids: run takes them
                                     batch_size=batch_size)}
    coefficients, achieved = {}, {}
    for s in chosen:
        with tqdm(desc=f"calibrate {s}", unit="row", disable=not progress) as bar:
            measure = _measure(model, ro, keys[s], vector[s], positions, statistic, batch_size, bar.update)
            coefficients[s], achieved[s] = search(measure, target=float(target_kl), start=start[keys[s]], rtol=rtol,
                                                  max_steps=max_steps, what=f"steering at {s}")
    prompt_hash = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    cal = Calibration(coefficients, float(target_kl), statistic, achieved, positions=str(as_positions(positions)),
                      prompts_sha256=prompt_hash, n_prompts=len(texts), rollout_tokens=int(rollout_tokens),
                      temp=float(temp), seed=seed, chat=bool(chat), backend=type(model).__name__,
                      model_id=str(getattr(model, "model_id", None) or "") or None)
    return vector.replace(calibration=cal)


def kl_at(
    model: Steerable, vector: SteeringVector, scale: float, *, site: str, prompts: Sequence[str] | None = None,
    rollout_tokens: int = 16, positions: str | dict | Positions = "all", chat: bool = True, system: str | None = None,
    temp: float = 0.0, seed: int = 0, statistic: str = "mean", batch_size: int = 32,
) -> float:
    """The KL statistic of steering ``scale * vector[site]``, measured as :func:`calibrate` measures it
    (to check a coefficient, or a strength's cost)."""
    path = model.resolve_path(site)
    texts = list(NEUTRAL_PROMPTS if prompts is None else prompts)
    ro = make_rollouts(model, texts, rollout_tokens=rollout_tokens, chat=chat, system=system, temp=temp,
                       seed=check_seed(seed), batch_size=batch_size)
    key = site_key(model, path, vector.hook_point)
    return _measure(model, ro, key, vector[path], positions, check_statistic(statistic), batch_size)([float(scale)])[0]


def search(measure: Callable[[list[float]], list[float]], *, target: float, start: float, rtol: float,
           max_steps: int, what: str) -> tuple[float, float]:
    """(coefficient, its statistic): the candidate closest to ``target`` found by bracketing then
    narrowing in log scale; ``measure(scales) -> statistics`` evaluates one step's candidates together.

    Raises:
        ValueError: no candidate reaches the target within ``max_steps`` (naming the largest measured).
    """
    seen: dict[float, float] = {}

    def run(scales: list[float]) -> None:
        new = [c for c in dict.fromkeys(scales) if c not in seen and np.isfinite(c) and c > 0]
        seen.update(zip(new, measure(new)))

    run([start * g for g in _GRID])
    for _ in range(max_steps - 1):
        bracket = _bracket(seen, target)
        if bracket is None:  # all below: widen upwards; all at or above: downwards
            top, bottom = max(seen), min(seen)
            below = all(v < target for v in seen.values())
            run([top * 4.0 ** k for k in range(1, 5)] if below else [bottom / 4.0 ** k for k in range(1, 5)])
            continue
        lo, hi = bracket
        best = min(seen, key=lambda c: abs(seen[c] - target))
        if abs(seen[best] - target) <= rtol * target or hi / lo < 1 + 1e-6:
            break
        run(_candidates(lo, hi, seen[lo], seen[hi], target))
    bracket = _bracket(seen, target)
    if bracket is None and all(v >= target for v in seen.values()):
        c = min(seen)
        raise ValueError(f"{what} exceeds a KL of {target:g} nats even at scale {c:.4g} ({seen[c]:.4g} nats): the "
                         f"direction is too strong to calibrate at this budget; choose a larger target_kl")
    if bracket is None:
        c = max(seen, key=lambda k: seen[k])
        raise ValueError(f"{what} never reaches a KL of {target:g} nats: the largest measured is {seen[c]:.4g} at scale "
                         f"{c:.4g} (scales {min(seen):.3g}..{max(seen):.3g} tried); choose a smaller target_kl")
    lo, hi = bracket
    inside = [c for c in seen if lo <= c <= hi]
    best = min(inside, key=lambda c: (abs(seen[c] - target), c))
    return float(best), float(seen[best])


def _bracket(seen: dict[float, float], target: float) -> tuple[float, float] | None:
    """(largest scale below the first crossing, smallest scale reaching ``target``), or None."""
    scales = sorted(seen)
    for i, c in enumerate(scales):
        if seen[c] >= target:
            return (scales[i - 1], c) if i > 0 else None
    return None


def _candidates(lo: float, hi: float, f_lo: float, f_hi: float, target: float) -> list[float]:
    """The log-log interpolation of the target between (lo, f_lo) and (hi, f_hi), and evenly log-spaced points."""
    t = np.linspace(0.0, 1.0, _INTERIOR + 2)[1:-1]
    points = list(np.exp(np.log(lo) + t * (np.log(hi) - np.log(lo))))
    if f_lo > 0 and f_hi > f_lo:
        w = (np.log(target) - np.log(f_lo)) / (np.log(f_hi) - np.log(f_lo))
        points.insert(0, float(np.exp(np.log(lo) + np.clip(w, 0.02, 0.98) * (np.log(hi) - np.log(lo)))))
    return [float(p) for p in points]


def _measure(model: Steerable, ro: Rollouts, key: str, direction: np.ndarray, positions: object, statistic: str,
             batch_size: int, done: Callable[[int], object] | None = None) -> Callable[[list[float]], list[float]]:
    """``measure(scales) -> statistic per scale``: all scales' rows in the same batched forwards."""
    d = np.asarray(direction, dtype=np.float32)
    where = positions if d.ndim == 1 else "all"  # a front-aligned (n, D) tensor sets its own positions

    def measure(scales: list[float]) -> list[float]:
        steer = [{key: iv.add_vector(d, scale=c, positions=where)} for c in scales]
        kls = token_kls(model, ro, steer, batch_size=batch_size)
        if done is not None:
            done(len(scales) * len(ro.tokens))
        return [kl_statistic(k, statistic) for k in kls]

    return measure
