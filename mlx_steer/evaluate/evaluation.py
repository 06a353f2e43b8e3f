"""``evaluate``: does a steering vector change the behaviour, and what does it cost the model?

Over a grid of layers x strengths (and the random / sign-flipped controls), batched with per-row
steering so one forward or one generation carries many cells:

* A/B behaviour probability (CAA) over multiple-choice items, and
* open-ended generation over prompts: a judge's behaviour score, fluency (perplexity of the steered
  text under the unsteered model) and distinct-n,

in one :class:`~mlx_steer.evaluate.table.EvalTable`. Greedy by default, so it is deterministic; the
random control and any sampling are seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..engine.limits import check_length, check_seed
from ..engine.positions import as_positions
from ..vectors.calibrated_units import calibrated_vector
from ..vectors.steering_vector import SteeringVector
from .ab import ab_scores
from .grid import Grid
from .items import ABItem, as_items
from .judges import Judge
from .open_ended import distinct_n, generation_scores
from .table import EvalRow, EvalTable

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["check_max_tokens", "evaluate", "in_units", "selectivity"]


def evaluate(
    model: Steerable,
    *,
    vector: object,
    layers: Sequence[int | str],
    strengths: Sequence[float],
    items: Sequence[ABItem] | Sequence[Mapping] | None = None,
    control_items: Sequence[ABItem] | Sequence[Mapping] | None = None,
    units: str = "raw",
    prompts: Sequence[str] | None = None,
    judge: Judge | None = None,
    controls: Sequence[str] = (),
    ab_positions: object = "last",
    positions: object = "all",
    score_span: object = None,
    max_tokens: int = 40,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 32,
    temp: float = 0.0,
    seed: int = 0,
    share_layers: bool = True,
    progress: bool = True,
) -> EvalTable:
    """Score a steering vector over layers x strengths on A/B items and/or open-ended prompts.

    Args:
        model: A steerable model of either backend.
        vector: A SteeringVector (a direction per layer, or one for every layer) or a (D,) array.
        layers: Layers (indices or site paths) to steer, one at a time.
        strengths: Multipliers (CAA's curves: e.g. -8 .. 8); 0 is the unsteered model.
        items: A/B items (:class:`ABItem` or dicts ``{question, answer_matching, answer_not_matching}``):
            measures ``ab_probability``.
        control_items: A/B items of an unrelated behaviour, scored in the same cells: adds
            ``control_ab_probability`` and ``selectivity`` (|target move| - |control move| from the
            unsteered cell; see :class:`~mlx_steer.evaluate.table.EvalRow`). Needs ``items``.
        units: ``"raw"``: strengths multiply the vector; ``"calibrated"``: strength 1 is each layer's
            calibrated coefficient (the vector needs a calibration for every layer, see
            :func:`mlx_steer.analysis.calibrate`).
        prompts: Open-ended prompts: measures ``behaviour`` (needs ``judge``), ``perplexity``,
            ``fluency``, ``distinct_1``/``distinct_2`` and ``loop_fraction`` (generations holding a
            repetition loop, :func:`~mlx_steer.analysis.loops.find_loops`).
        judge: ``judge(texts) -> scores``, e.g. :func:`~mlx_steer.evaluate.judges.sentiment_judge`.
        controls: Also score ``"random"`` (a seeded direction of the vector's norm at each layer) and
            ``"flipped"`` (the vector negated).
        ab_positions: Where A/B cells steer: ``"last"`` is CAA's "after the instruction" (from the
            last token both answers' sequences share: the ``"("`` where the tokenizer splits it from
            the letter, the last prompt token where ``"(A"`` is one token), ``"all"`` every position.
        positions: Where open-ended cells steer (default every position, generated tokens included).
        score_span: Show the judge only the generated tokens this position selector selects, e.g.
            ``"answer"`` (outside the reasoning) or a span selector (default: the whole generation).
            Perplexity, distinct-n and the loop count still read every generated token.
        max_tokens: Tokens generated per prompt and cell.
        chat: Ask A/B questions and prompts as chat user turns (False: plain text, for base models).
        system: A system prompt for those turns.
        batch_size: Rows per forward (items or prompts x cells side by side).
        temp: Sampling temperature for generation (0: greedy).
        seed: Seeds the random control and sampling (0..2**64-1).
        share_layers: A/B forwards start at their steered layer from the unsteered pass's input there.
        progress: Show a progress bar over the rows.

    Returns:
        An :class:`~mlx_steer.evaluate.table.EvalTable` with a row per (vector, layer, strength).

    Raises:
        ValueError: neither items nor prompts, prompts without a judge, bad strengths/layers/controls,
            a layer the vector lacks, answers that tokenize identically, bad options (naming them), a seed
            out of 0..2**64-1, a longest prompt + ``max_tokens`` over the model's context length.
    """
    if items is None and prompts is None:
        raise ValueError("evaluate needs A/B items=, open-ended prompts= (with a judge), or both")
    if prompts is not None and judge is None:
        raise ValueError("open-ended prompts need a judge=, e.g. mlx_steer.evaluate.sentiment_judge()")
    if control_items is not None and items is None:
        raise ValueError("control_items= measure selectivity against the target behaviour's items=; give items= too")
    vector, coefficients = in_units(model, vector, layers, units)
    for name, value in (("max_tokens", max_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not np.isfinite(temp) or temp < 0:
        raise ValueError(f"temp must be a non-negative number, got {temp!r}")
    seed = check_seed(seed)
    ab_items = as_items(items) if items is not None else None
    controls_ab = as_items(control_items) if control_items is not None else None
    if score_span is not None:
        if prompts is None:
            raise ValueError("score_span= chooses what the judge of open-ended prompts= reads; give prompts= too")
        as_positions(score_span)  # a bad selector is refused (naming the valid forms) before anything runs
    texts = [prompts] if isinstance(prompts, str) else list(prompts) if prompts is not None else None
    if texts is not None and (not texts or not all(isinstance(p, str) and p for p in texts)):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if texts is not None:
        check_max_tokens(model, texts, max_tokens=max_tokens, chat=chat, system=system)
    grids = {}
    if ab_items is not None:
        grids["ab"] = Grid(model, vector=vector, layers=layers, strengths=strengths, controls=controls,
                           positions=ab_positions, seed=seed)
    if texts is not None:
        grids["gen"] = Grid(model, vector=vector, layers=layers, strengths=strengths, controls=controls,
                            positions=positions, seed=seed)
    grid = next(iter(grids.values()))
    n_distinct = len(grid.distinct())
    total = n_distinct * ((len(ab_items) if ab_items else 0) + (len(controls_ab) if controls_ab else 0)
                          + (len(texts) if texts else 0))
    with tqdm(total=total, desc="evaluate", unit="row", disable=not progress) as bar:
        ab = ab_scores(model, ab_items, grids["ab"], chat=chat, system=system, batch_size=batch_size,
                       share_layers=share_layers, progress=bar.update) if ab_items is not None else None
        ctl = ab_scores(model, controls_ab, grids["ab"], chat=chat, system=system, batch_size=batch_size,
                        share_layers=share_layers, progress=bar.update) if controls_ab is not None else None
        gen = generation_scores(model, texts, grids["gen"], judge=judge, max_tokens=max_tokens, chat=chat,
                                system=system, batch_size=batch_size, temp=temp, seed=seed,
                                score_span=score_span, progress=bar.update) if texts is not None and judge is not None else None
    measures: list[str] = (["ab_probability"] if ab is not None else []) + (
        ["behaviour", "perplexity", "fluency", "distinct_1", "distinct_2", "loop_fraction"] if gen is not None
        else []) + (
        ["control_ab_probability", "selectivity"] if ctl is not None else [])
    base_ppl = gen[("unsteered",)].perplexity if gen is not None else None
    rows, samples = [], {}
    for cell in grid.cells:
        key = grid.key(cell)
        values: dict[str, Any] = {}
        if ab is not None:
            values["ab_probability"] = float(np.mean(ab[key]))
        if ab is not None and ctl is not None:
            values["control_ab_probability"] = float(np.mean(ctl[key]))
            values["selectivity"] = selectivity(float(np.mean(ab[key])), float(np.mean(ab[("unsteered",)])),
                                                values["control_ab_probability"], float(np.mean(ctl[("unsteered",)])))
        if gen is not None:
            g = gen[key]
            values.update(behaviour=float(np.mean(g.scores)), perplexity=g.perplexity,
                          fluency=float(base_ppl / g.perplexity) if base_ppl is not None else None,
                          distinct_1=distinct_n(g.texts, 1), distinct_2=distinct_n(g.texts, 2),
                          loop_fraction=g.loop_fraction)
            samples[(cell.vector, cell.layer, cell.strength)] = g.texts
        rows.append(EvalRow(cell.vector, cell.layer, cell.strength, **values))
    info = {"model": str(getattr(model, "model_id", None) or ""), "backend": type(model).__name__,
            "items": str(len(ab_items) if ab_items else 0), "prompts": str(len(texts) if texts else 0),
            "seed": str(seed), "chat": str(chat), "ab_positions": str(ab_positions), "positions": str(positions),
            "max_tokens": str(max_tokens), "temp": str(temp), "units": units,
            **({"score_span": str(as_positions(score_span))} if score_span is not None else {}),
            **({"control_items": str(len(controls_ab))} if controls_ab else {}),
            **{f"coefficient {layer}": f"{c:.6g}" for layer, c in coefficients.items()},
            **{f"norm {layer}": f"{float(np.linalg.norm(grid.direction('steering', layer))):.4g}" for layer in grid.layers}}
    return EvalTable(tuple(rows), tuple(measures), info, samples)


def check_max_tokens(model: Steerable, prompts: Sequence[str], *, max_tokens: int, chat: bool = True,
                     system: str | None = None) -> None:
    """Refuse, before any forward, generating ``max_tokens`` after the longest of ``prompts`` (encoded
    as :func:`evaluate` encodes them) beyond the model's context length (its learned position table,
    else what its config declares; no bound when neither says).

    Raises:
        ValueError: naming the prompt's length, ``max_tokens`` and the context length.
    """
    longest = max(len(model.encode(p, chat=chat, system=system)) for p in prompts)
    check_length(model.context_length, longest + max_tokens, f"the longest prompt ({longest}) + max_tokens "
                 f"({max_tokens})", source="tokens of context")


def selectivity(target: float, target_unsteered: float, control: float, control_unsteered: float) -> float:
    """How much more a cell moves the target behaviour than the control one: ``|target - unsteered|
    - |control - unsteered control|``."""
    return abs(target - target_unsteered) - abs(control - control_unsteered)


def in_units(model: Steerable, vector: object, layers: Sequence[int | str], units: str) -> tuple[object, dict]:
    """(the vector to multiply by raw strengths, {layer: coefficient}) for strengths in ``units``:
    ``"raw"`` leaves it as it is; ``"calibrated"`` multiplies each layer's direction by its calibrated
    coefficient.

    Raises:
        ValueError: unknown units; calibrated units for a vector without a calibration of every layer.
    """
    if units == "raw":
        return vector, {}
    if units != "calibrated":
        raise ValueError(f"unknown units {units!r}; valid: 'raw' (multipliers of the vector), 'calibrated' (1 = its "
                         "calibrated coefficient)")
    if not isinstance(vector, SteeringVector):
        raise ValueError(f"calibrated units need a calibrated SteeringVector, got {type(vector).__name__}")
    paths = {layer: model.resolve(layer if isinstance(layer, str) else f"layers.{layer}").path for layer in layers}
    raw = calibrated_vector(vector, sites=tuple(dict.fromkeys(paths.values())))
    cal = vector.calibration
    return raw, {layer: cal.coefficients[p] for layer, p in paths.items()} if cal is not None else {}
