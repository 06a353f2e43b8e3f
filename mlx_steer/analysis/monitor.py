"""What a generation reads along a direction, token by token (:func:`projection_monitor`), and
how long steering lasts once released (:func:`persistence_run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import interventions as iv
from ..vectors import similarity
from ..engine.positions import Positions
from . import phases
from .loops import Loop, find_loops
from .vector_inputs import is_vector_set, unit_direction

if TYPE_CHECKING:
    from ..engine.paths import Site
    from ..engine.model import Steerable


@dataclass(frozen=True, eq=False)
class MonitoredGeneration:
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
    prompt_tokens: tuple[int, ...] = ()

    @property
    def positions(self) -> np.ndarray:
        """Absolute position each projection was read at."""
        return self.prompt_len - 1 + np.arange(len(self.tokens))

    def span_mask(self, selector: object, *, tokenizer: Any) -> np.ndarray:
        """Per projection: whether ``selector`` (any position selector, span selectors included)
        selects the position it was read at (see :mod:`~mlx_steer.analysis.phases`)."""
        return self._masks({"s": selector}, tokenizer)["s"][self.positions]

    def by_span(self, selectors: Mapping[str, object], *, tokenizer: Any) -> dict[str, float]:
        """Name -> mean projection over the positions each selector selects (NaN where none), e.g.
        ``by_span({"reasoning": spans.reasoning(), "answer": spans.answer()}, tokenizer=model.tokenizer)``.

        Raises:
            ValueError: a bad selector, or a generation without its prompt tokens.
        """
        means = phases.span_means(self.projections, self.positions, self._masks(selectors, tokenizer))
        return {name: float(m) for name, m in means.items()}

    def loops(self, *, spans: Mapping[str, object] | None = None, tokenizer: Any = None, n: int = 4,
              window: int = 64, min_repeats: int = 3) -> list[Loop]:
        """The repetition loops of the generated tokens (:func:`~mlx_steer.analysis.loops.find_loops`),
        at absolute positions, each labelled with the span of ``spans`` holding most of its tokens."""
        if not spans:
            return [lp.shifted(self.prompt_len) for lp in find_loops(self.tokens, n=n, window=window,
                                                                     min_repeats=min_repeats)]
        self._check_prompt()
        return phases.generation_loops(self.prompt_tokens, self.tokens, tokenizer=tokenizer, spans=spans, n=n,
                                       window=window, min_repeats=min_repeats)

    def _masks(self, selectors: Mapping[str, object], tokenizer: Any) -> dict[str, np.ndarray]:
        self._check_prompt()
        return phases.span_masks(selectors, self.prompt_tokens + self.tokens, tokenizer=tokenizer,
                                 prompt_len=self.prompt_len)

    def _check_prompt(self) -> None:
        if len(self.prompt_tokens) != self.prompt_len:
            raise ValueError(f"splitting by span needs the prompt's {self.prompt_len} tokens; this generation "
                             f"holds {len(self.prompt_tokens)} (prompt_tokens=)")


@dataclass(frozen=True, eq=False)
class Persistence(MonitoredGeneration):
    """A :class:`MonitoredGeneration` of a generation steered for its first ``steer_tokens`` tokens."""

    steer_tokens: int = 0

    @property
    def steered(self) -> np.ndarray:
        """Per token: whether it was produced under steering."""
        return np.arange(len(self.tokens)) < self.steer_tokens

    @property
    def steered_phase(self) -> tuple[int, ...]:
        """Tokens generated under steering."""
        return self.tokens[: self.steer_tokens]

    @property
    def free_phase(self) -> tuple[int, ...]:
        """Tokens generated after steering stopped."""
        return self.tokens[self.steer_tokens :]


def projection_monitor(
    model: Steerable,
    prompt: str | Sequence[int],
    *,
    site: str | Site,
    direction: object,
    max_tokens: int = 64,
    interventions: Mapping | Any = None,
    chat: bool = False,
    system: str | None = None,
    **gen_kwargs: Any,
) -> MonitoredGeneration:
    """Generate and read, per token, ``site``'s activation projected on ``direction`` (unit).

    Args:
        model: A steerable model of either backend.
        prompt: Text, or token ids.
        site: Where to read, e.g. ``"layers.6"``.
        direction: A (D,) array, or a SteeringVector holding a direction at ``site``.
        max_tokens: Tokens to generate.
        interventions: Steering during the generation (dict or SteeringVector).
        chat: Wrap the prompt as a chat user turn.
        system: System message for ``chat``.
        gen_kwargs: Other ``stream_generate`` options (``temp``, ``seed``...).

    Returns:
        A :class:`MonitoredGeneration`.
    """
    key, unit = unit_direction(model, site, direction)
    ids = model.encode(prompt, chat=chat, system=system)
    return MonitoredGeneration(**_monitored(model, ids, key, unit, max_tokens=max_tokens,
                                interventions=interventions, **gen_kwargs))


def persistence_run(
    model: Steerable,
    prompt: str | Sequence[int],
    *,
    steer_tokens: int,
    free_tokens: int,
    site: str | Site,
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
        model: A steerable model of either backend.
        prompt: Text, or token ids.
        steer_tokens: Tokens generated under steering.
        free_tokens: Tokens generated after it, unsteered.
        site: Where to read projections.
        vector: A SteeringVector (added at its sites with ``scale``), or a (D,) array added at ``site``.
        scale: Strength of ``vector``.
        interventions: Instead of ``vector``, a ``{site: intervention}`` dict; their positions
            must be ``"all"`` (they are replaced by the steering window).
        direction: Direction to project on; defaults to ``vector``'s direction at ``site``.
        suppress_eos: Forbid EOS so both phases run to full length.
        steer_prompt: Steer the prompt's positions too.
        chat: Wrap the prompt as a chat user turn.
        system: System message for ``chat``.
        gen_kwargs: Other ``stream_generate`` options (``temp``, ``seed``, ``logits_processors``...).

    Returns:
        A :class:`Persistence`; ``steered`` tells the phases apart.

    Raises:
        ValueError: bad phase lengths, not exactly one of ``vector``/``interventions``, or
            interventions with positions of their own.
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
    key, unit = unit_direction(model, site, direction)
    ids = model.encode(prompt, chat=chat, system=system)
    if vector is not None:
        if is_vector_set(vector):
            interventions = vector.to_interventions(scale=scale)  # type: ignore[attr-defined]
        else:
            interventions = {key: iv.add_vector(vector, scale=scale)}
    spec = None
    if steer_tokens and interventions is not None:
        window = Positions.window(0 if steer_prompt else len(ids) - 1, len(ids) - 1 + steer_tokens)
        spec = _reposition(interventions, window)
    processors = list(gen_kwargs.pop("logits_processors", None) or [])
    if suppress_eos:
        processors.append(model.ban_tokens_processor(sorted(model.eos_token_ids)))
    out = _monitored(model, ids, key, unit, max_tokens=steer_tokens + free_tokens,
                     interventions=spec, logits_processors=processors, **gen_kwargs)
    return Persistence(**out, steer_tokens=steer_tokens)


def _monitored(model: Steerable, ids: list[int], key: str, unit: np.ndarray, **gen: Any) -> dict[str, Any]:
    """Generate from ``ids``, recording ``key`` at each last position; the fields of a MonitoredGeneration."""
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
                prompt_len=len(ids), finish_reason=finish, prompt_tokens=tuple(int(t) for t in ids))


def _reposition(spec: Mapping, positions: Positions) -> dict[str, list]:
    """``spec``'s interventions (all at positions ``"all"``) moved to ``positions``."""
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
