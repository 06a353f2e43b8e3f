"""Running from shared prefixes: a batch of prefixes runs once and keeps its KV cache (per row, rows
of different lengths left-padded); suffix rows then continue it, each choosing the prefix row it
continues and carrying its own interventions (A/B cells, sweep strengths), with logits kept at
chosen positions and recordings as in :meth:`~mlx_steer.engine.model.Steerable.run`.

A suffix row's result is that of the full forward of ``prefix + suffix`` with the same
interventions, provided they act only on the suffix: positions are absolute, continuing from the
prefix's length (they come from the cache offset, per row), and an intervention or recording that
selects a prefix position (``"all"``, ``"prompt"``, an index before the suffix, a front-aligned
tensor, a gate that reads the prompt) is refused with :class:`PrefixRefused` — the cached prefix
cannot be changed afterwards; callers fall back to the full forward there. The prefix forward
itself may carry interventions common to every row (``prefix_interventions``).

Suffixes of different lengths run as separate forwards (one per length, so no padding sits between
prefix and suffix), large groups in chunks of ``max_rows``; each forward gathers (replicates) the
cache rows its suffixes continue, so the kept cache itself is never changed.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import interventions as iv
from .hooks import Hooks
from .layer_skip import LayerSkip
from .logit_positions import LogitsSpec, logit_positions
from .plan import SitePlan, check_plans
from .positions import Positions
from .results import Trace

if TYPE_CHECKING:
    from .arrays import Array
    from .model import Steerable

__all__ = ["PrefixRefused", "PrefixRunner", "SharedPrefix", "shared_prefix"]


class PrefixRunner(Protocol):
    """What a backend offers for shared prefixes: a ``prefix_cache`` module beside its backend class
    (``mlx_steer/backends/<name>/prefix_cache.py``) with these two functions."""

    def run_prefix(self, backend: Any, tokens: list[list[int]], *, prompt_lengths: np.ndarray | None = None) -> Any:
        """Run left-padded prefixes once (their prompts ending at ``prompt_lengths``, default their
        own lengths); returns the kept caches (opaque to the engine)."""
        ...

    def forward_from(self, backend: Any, prefix: Any, rows: np.ndarray, tokens: list[list[int]],
                     recorders: Mapping[str, Any], *, keys: np.ndarray, keep_logits: bool,
                     positions: np.ndarray | None) -> Any:
        """One forward of equal-length suffixes continuing prefix rows ``rows`` (row keys ``keys``)."""
        ...


def prefix_runner(backend: object) -> PrefixRunner:
    """The ``prefix_cache`` module of ``backend``'s package.

    Raises:
        PrefixRefused: the backend has none.
    """
    return backend_module(backend, "prefix_cache", "run from shared prefixes")


def backend_module(backend: object, name: str, what: str) -> Any:
    """The module ``name`` beside ``backend``'s class in its package (a backend's optional verbs).

    Raises:
        PrefixRefused: the backend has none ("the X backend cannot {what}").
    """
    package = type(backend).__module__.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        raise PrefixRefused(f"the {type(backend).__name__} backend cannot {what}") from exc


class PrefixRefused(ValueError):
    """What the shared-prefix path cannot compute (the full forward can: fall back to ``run``)."""


def shared_prefix(model: Steerable, prefixes: Sequence[Sequence[int]], *,
                  prefix_interventions: Mapping | Any = None) -> SharedPrefix:
    """Run ``prefixes`` (token-id lists) once and keep their KV caches; see :class:`SharedPrefix`.

    Raises:
        PrefixRefused: a model split over ranks, or whose cache cannot be shared (e.g. a rotating window).
        ValueError: empty or bad prefixes, or bad ``prefix_interventions``.
    """
    return SharedPrefix(model, prefixes, prefix_interventions=prefix_interventions)


class SharedPrefix:
    """Prefixes run once, their KV caches kept for :meth:`run`.

    Args:
        model: The model.
        prefixes: Token-id lists (each non-empty).
        prefix_interventions: ``{site: intervention(s)}`` or a SteeringVector acting on every
            prefix row (not per row: every cell continuing the cache shares them).
    """

    def __init__(self, model: Steerable, prefixes: Sequence[Sequence[int]], *,
                 prefix_interventions: Mapping | Any = None):
        if model.distributed is not None:
            raise PrefixRefused(f"shared prefixes need the whole model in one process; it is split ({model.distributed})")
        if isinstance(prefixes, str) or not prefixes or any(isinstance(p, str) or len(p) == 0 for p in prefixes):
            raise ValueError("prefixes must be a non-empty list of non-empty token-id lists")
        if isinstance(prefix_interventions, (list, tuple)):
            raise ValueError("prefix_interventions act on every prefix row; per-row steering goes in run(interventions=...)")
        self.model = model
        tokens = [model.prompts.check_ids(list(p)) for p in prefixes]
        self.lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        model.check_length(int(self.lengths.max()), "the longest prefix")
        plans = model.plan(interventions=prefix_interventions)
        check_plans(plans, limit=int(self.lengths.min()), prompt_len=int(self.lengths.min()), generating=False,
                    what="the shortest prefix")
        self.tokens = tokens
        with model.calls("shared_prefix"), Hooks(model.backend, plans, None, registry=model.registry):
            self.runner = prefix_runner(model.backend)
            self.state: Any = self.runner.run_prefix(model.backend, tokens)

    def run(
        self,
        suffixes: Sequence[Sequence[int]],
        *,
        prefix_of: Sequence[int] | None = None,
        interventions: Mapping | Any = None,
        record: object = None,
        record_positions: object = "last",
        reduce: str | None = None,
        logits: LogitsSpec = "last",
        record_stage: str = "after",
        check_finite: bool = True,
        max_rows: int = 64,
        from_layer: int | None = None,
        hidden: Any = None,
    ) -> Trace:
        """Continue prefix row ``prefix_of[i]`` with ``suffixes[i]``, each row with its own steering.

        Args:
            suffixes: Token-id lists (each non-empty).
            prefix_of: Which prefix each suffix continues (default: suffix ``i`` continues prefix ``i``).
            interventions: As for ``run``: one mapping for every row or a list with one per suffix;
                positions are absolute in the whole sequence (prefix + suffix) and must select
                suffix positions only (``last``, ``last_n(n)`` within the suffix, indices from the
                prefix's length on).
            record, record_positions, reduce, record_stage: As for ``run``, suffix positions only.
            logits: ``"last"`` (default), indices or lists per row (absolute in the whole sequence;
                negative from its end), within the suffix; False keeps none.
            check_finite: Raise ValueError on NaN/+inf logits.
            max_rows: The most rows one forward carries (its gathered cache rows included).
            from_layer: Start the suffix forwards at this decoder layer (1 .. layers - 1) with
                ``hidden`` as its input, as for ``run``: the layers below run for no row (their
                cache rows are not read again in that forward), and sites below it are refused.
            hidden: (suffixes, longest suffix, hidden size) input of ``from_layer`` at the suffix
                positions, each row's right-aligned (left-padded, as a batch of the suffixes), e.g.
                what ``layers.{from_layer}:input`` recorded there in an unsteered full forward.

        Returns:
            A :class:`Trace` whose rows are the suffixes in order; ``tokens`` the whole sequences.

        Raises:
            PrefixRefused: an intervention, recording or logits position that touches a prefix.
            ValueError: bad suffixes, ``prefix_of``, interventions, positions or ``max_rows``.
        """
        m = self.model
        if isinstance(suffixes, str) or not suffixes or any(isinstance(s, str) or len(s) == 0 for s in suffixes):
            raise ValueError("suffixes must be a non-empty list of non-empty token-id lists")
        if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
            raise ValueError(f"max_rows {max_rows!r} out of range; valid: an int >= 1")
        tokens = [m.prompts.check_ids(list(s)) for s in suffixes]
        N = len(tokens)
        of = np.arange(N) if prefix_of is None else np.asarray(prefix_of)
        if of.shape != (N,) or not np.issubdtype(of.dtype, np.integer):
            raise ValueError(f"prefix_of must hold one int per suffix ({N}), got {prefix_of!r}")
        if ((of < 0) | (of >= self.lengths.size)).any():
            bad = int(of[(of < 0) | (of >= self.lengths.size)][0])
            raise ValueError(f"prefix_of {bad} out of range; valid: 0..{self.lengths.size - 1}")
        lp = self.lengths[of]
        ls = np.array([len(t) for t in tokens], dtype=np.int64)
        full = lp + ls
        m.check_length(int(full.max()), "prefix + suffix")
        plans = m.plan(interventions=interventions, record=record, record_positions=record_positions,
                       reduce=reduce, rows=N, record_stage=record_stage)
        check_plans(plans, limit=int(full.min()), prompt_len=int(full.min()), generating=False,
                    what="the shortest prefix + suffix")
        refuse_prefix_positions(plans, lp, ls)
        keep = None if logits is False else _suffix_logits(logits, lp, full)
        skip = None
        if from_layer is not None or hidden is not None:
            if from_layer is None or hidden is None:
                raise ValueError("from_layer and hidden go together: the layer to start at and its input")
            skip = LayerSkip(m.backend, from_layer, hidden, rows=N, length=int(ls.max()), plans=plans)
        groups = [g[i: i + max_rows] for n in sorted(set(ls.tolist())) for g in [np.flatnonzero(ls == n)]
                  for i in range(0, g.size, max_rows)]
        xp = m.xp
        logit_parts: list[Array] = []
        rec_parts: dict[str, list[Array]] = {}
        with m.calls("run"), Hooks(m.backend, plans, reduce, registry=m.registry) as hooks, \
                contextlib.ExitStack() as undo:
            for u in skip.install() if skip is not None else []:
                undo.callback(u)
            for rows in groups:
                out = self.runner.forward_from(m.backend, self.state, of[rows], [tokens[r] for r in rows], hooks.recorders,
                                             keys=rows, keep_logits=keep is not None, positions=keep)
                if out is not None:
                    logit_parts.append(out)
                for site, rec in hooks.recorders.items():
                    got = rec.result()
                    if got is not None:
                        rec_parts.setdefault(site, []).append(got)
                    if len(groups) > 1:
                        rec.reset()
            if len(groups) > 1:
                order = np.argsort(np.concatenate(groups))  # back to suffix order
                for site, rec in hooks.recorders.items():
                    parts = rec_parts.get(site, [])
                    if parts:
                        rec.set_result(_in_order(xp, parts, order, site))
            logits_out = None if not logit_parts else logit_parts[0] if len(groups) == 1 else \
                _in_order(xp, logit_parts, np.argsort(np.concatenate(groups)), "logits")
            if check_finite and logits_out is not None and xp.truth(xp.nonfinite(logits_out)):
                raise ValueError("the logits are not finite (NaN or +inf): the interventions overflow the "
                                 "activations; use a smaller scale or vector")
            return Trace(hooks.activations, logits_out, [self.tokens[o] + t for o, t in zip(of.tolist(), tokens)])


def refuse_prefix_positions(plans: Mapping[str, SitePlan], lp: np.ndarray, ls: np.ndarray, *,
                            prompt_ends: np.ndarray | None = None) -> None:
    """Raise :class:`PrefixRefused` for an intervention or recording that would act on a prefix
    position of a row it acts on (row key ``b``: prefix length ``lp[b]``, suffix length ``ls[b]``),
    or select other suffix positions than in the full forward. ``prompt_ends`` (per row key) is
    where each row's prompt ends when the suffix goes on past it (generation: ``generated`` and
    ``last`` count from there, as in the full run); by default the whole sequence is the prompt."""
    for plan in plans.values():
        uses: list[tuple[Positions, str, frozenset[int] | None]] = [
            (i.positions, "intervention", i.rows) for i in plan.interventions]
        if plan.record is not None:
            uses.append((plan.record, "recording", None))
        for i in plan.interventions:
            if isinstance(i, iv.AddVector) and i.front_aligned:
                raise PrefixRefused(f"a front-aligned tensor at {plan.site.key!r} acts from position 0, inside the "
                                    "cached prefix; run the whole sequence instead")
            if i.condition is not None:
                raise PrefixRefused(f"a gated intervention at {plan.site.key!r} reads the whole prompt; run the "
                                    "whole sequence instead")
        for sel, use, rows in uses:
            keys = np.arange(lp.size) if rows is None else np.array(sorted(r for r in rows if r < lp.size), dtype=np.int64)
            ends = lp + ls if prompt_ends is None else np.asarray(prompt_ends, dtype=np.int64)
            for p, s, e in sorted(set(zip(lp[keys].tolist(), ls[keys].tolist(), ends[keys].tolist()))):
                n = p + s
                whole = sel.mask(np.arange(n)[None], np.array([e]), 0)[0]
                tail = sel.mask(p + np.arange(s)[None], np.array([e]), np.array([p if prompt_ends is None else 0]))[0]
                if whole[:p].any():
                    raise PrefixRefused(
                        f"{use} at {plan.site.key!r} selects positions {sel}, which include position "
                        f"{int(np.flatnonzero(whole[:p])[0])} of a {p}-token cached prefix; only positions "
                        f">= the prefix's length can be steered or recorded from a shared prefix "
                        "(e.g. 'last', last_n(n)); run the whole sequence instead")
                if not np.array_equal(whole[p:], tail):
                    raise PrefixRefused(f"{use} at {plan.site.key!r} selects positions {sel}, which mean other "
                                        "positions in a continuation than in the whole sequence")


def _suffix_logits(spec: object, lp: np.ndarray, full: np.ndarray) -> np.ndarray:
    """(N, k) absolute positions whose logits are kept, each within its row's suffix."""
    if spec is True or (isinstance(spec, str) and spec == "all"):
        raise PrefixRefused("logits=True keeps every position, prefixes included; from a shared prefix keep "
                            "'last' or indices within the suffixes")
    at = logit_positions(spec, full.tolist())
    assert at is not None
    inside = at < lp[:, None]
    if inside.any():
        row, col = map(int, np.argwhere(inside)[0])
        raise PrefixRefused(f"logits position {int(at[row, col])} of row {row} lies in its {int(lp[row])}-token "
                            f"cached prefix; valid: {int(lp[row])}..{int(full[row]) - 1}")
    return at


def _in_order(xp: Any, parts: list[Array], order: np.ndarray, what: str) -> Array:
    """Per-group results (rows grouped by suffix length) as one array in suffix order."""
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"{what}: suffixes of different lengths give {sorted(shapes)} positions per row, which "
                         "cannot be stacked; record positions every suffix has as many of (e.g. 'last')")
    whole = xp.concatenate(parts, axis=0)
    return whole[xp.index(order, like=whole)]
