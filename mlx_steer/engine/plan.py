"""Turn a user's ``interventions`` and ``record`` arguments into one plan per resolved site.

Backend-neutral: both backends validate everything here before they patch anything, so bad
input raises before the model is touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from . import interventions as iv
from .paths import PathResolver, Site
from .positions import Positions, as_positions, check_reachable
from .recording import REDUCTIONS

RECORD_STAGES = ("after", "before")


@dataclass
class SitePlan:
    site: Site
    interventions: list[iv.Intervention] = field(default_factory=list)
    record: Positions | None = None
    record_before: bool = False  # record the model's own value, before this site's interventions


def plan_sites(
    resolver: PathResolver,
    *,
    interventions: Mapping | None,
    record: object,
    record_positions: object = "all",
    reduce: str | None = None,
    record_stage: str = "after",
) -> dict[str, SitePlan]:
    """Resolve and validate sites; returns plans keyed by canonical site key, in given order.

    Args:
        resolver: The model's path resolver.
        interventions: ``{site: intervention | callable | [..]}``.
        record: ``None``, a site, a list of sites, or ``{site: positions}``.
        record_positions: Default positions for recorded sites.
        reduce: ``None`` or ``"mean"`` (average the recorded positions per row).
        record_stage: ``"after"`` records what flows on (after the site's interventions);
            ``"before"`` records the model's own value at the site, before them.

    Raises:
        ValueError: unknown site, bad intervention, bad positions, bad reduce.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; valid: None, 'mean'")
    if record_stage not in RECORD_STAGES:
        raise ValueError(f"unknown record_stage {record_stage!r}; valid: {', '.join(RECORD_STAGES)}")
    plans: dict[str, SitePlan] = {}

    def plan(spec: object) -> SitePlan:
        site = resolver.resolve(spec)
        return plans.setdefault(site.key, SitePlan(site))

    if interventions is not None:
        if not isinstance(interventions, Mapping):
            raise ValueError(f"interventions must be a dict {{site: intervention}}, got {type(interventions).__name__}")
        for spec, value in interventions.items():
            ivs = iv.as_intervention_list(value, site=str(spec))
            ivs = [i if i.condition is None else replace(i, condition=i.condition.resolved(resolver)) for i in ivs]
            site = plan(spec)
            for i in ivs:
                if i.condition is not None and i.positions.kind == "prompt":
                    raise ValueError(_gate_refusal(i, site.site, "it selects the prompt's positions, which are "
                                                   "read before the gate decides"))
            site.interventions.extend(i for i in ivs if not i.is_noop)
    default = as_positions(record_positions)
    if record is None:
        items: list[tuple[object, Positions]] = []
    elif isinstance(record, (str, Site)):
        items = [(record, default)]
    elif isinstance(record, Mapping):
        items = [(k, as_positions(v)) for k, v in record.items()]
    elif isinstance(record, Iterable):
        items = [(k, default) for k in record]
    else:
        raise TypeError(f"record must be a site, a list of sites or {{site: positions}}, got {type(record).__name__}")
    for spec, positions in items:
        p = plan(spec)
        p.record, p.record_before = positions, record_stage == "before"
    return plans


def check_plans(plans: Mapping[str, SitePlan], *, limit: int, prompt_len: int, what: str,
                generating: bool = True, prompt_ends: Sequence[int] | None = None) -> None:
    """Reject what can never apply, before anything is installed: explicit indices at or past
    ``limit`` (the positions every row reaches), front-aligned tensors longer than the prompt,
    gated interventions on positions a gate never steers (see :func:`check_gates`), and — in a
    forward over prompts (``generating=False``) — selectors of generated tokens, which would
    select nothing. ``prompt_ends``: where each row's prompt ends, absolute (default: ``prompt_len``)."""
    check_gates(plans, prompt_ends=(list(prompt_ends) if prompt_ends is not None else [prompt_len])
                if generating else None)
    for plan in plans.values():
        selectors = [(plan.record, "recording")] if plan.record is not None else []
        selectors += [(i.positions, "intervention") for i in plan.interventions]
        for positions, use in selectors:
            check_reachable(positions, limit, what=what)
            if not generating and positions.kind in ("generated", "first_generated"):
                raise ValueError(
                    f"{use} at {plan.site.key!r} selects positions {positions}, but a forward over prompts "
                    "(run/trace) generates nothing; use them while generating"
                )
        for i in plan.interventions:
            if isinstance(i, iv.AddVector) and i.front_aligned and i.vector.shape[0] > prompt_len:
                raise ValueError(
                    f"front-aligned tensor at {plan.site.key!r} has {i.vector.shape[0]} positions but the "
                    f"prompt has {prompt_len} tokens; it must not be longer than the prompt"
                )


GATE_ACTS_ON = ("a gate decides once a row's prompt has been read, so it acts on generated tokens only "
                "(positions 'all', 'last', 'generated', first_generated(n), or indices past the prompt)")


def _gate_refusal(i: iv.Intervention, site: Site, why: str) -> str:
    verb = re.sub(r"(?<!^)(?=[A-Z])", "_", type(i).__name__).lower()
    return f"{verb} at {site.key!r} gated by a condition (when) cannot act where asked: {why}; {GATE_ACTS_ON}"


def check_gates(plans: Mapping[str, SitePlan], *, prompt_ends: Sequence[int] | None) -> None:
    """Refuse a gated intervention that could never act (it would be silently dropped): any in a
    forward over prompts (``prompt_ends=None``: nothing is generated), and, while generating, one
    whose explicit positions reach into a prompt it acts on (``prompt_ends``: each row's prompt end,
    absolute, by row key; a row-scoped intervention is checked against its own rows)."""
    for plan in plans.values():
        for i in plan.interventions:
            if i.condition is None:
                continue
            if prompt_ends is None:
                raise ValueError(_gate_refusal(i, plan.site, "a forward over prompts (run/trace) generates "
                                               "nothing; use it while generating"))
            first = min(i.positions.indices) if i.positions.kind == "indices" else \
                i.positions.start if i.positions.kind == "window" else None
            if first is None:
                continue
            rows = [r for r in i.rows if r < len(prompt_ends)] if i.rows is not None else []
            end = max(prompt_ends[r] for r in rows) if rows else max(prompt_ends)
            if first < end:
                raise ValueError(_gate_refusal(i, plan.site, f"it selects positions {i.positions}, and position "
                                               f"{first} lies in the prompt (positions < {end})"))


def as_interventions(
    value: object, *, scale: float = 1.0, positions: object = "all", rows: int | None = None,
) -> Mapping | None:
    """Accept ``{site: intervention}``, a SteeringVector (anything with ``to_interventions``), or
    — for a batch of ``rows`` prompts — a list with one of those (or None) per row, which becomes
    one mapping whose interventions are scoped to their row (see ``Intervention.for_rows``).
    """
    if value is None or isinstance(value, Mapping):
        return value
    if hasattr(value, "to_interventions"):
        return value.to_interventions(scale=scale, positions=positions)
    if isinstance(value, (list, tuple)):
        if rows is None:
            raise ValueError(
                "expected a dict {site: intervention} or a SteeringVector; a list of them (one per prompt) "
                "is only taken for a batch of prompts (run, batch_generate)"
            )
        if len(value) != rows:
            raise ValueError(f"per-row interventions: got {len(value)} entries for {rows} prompts; give one per prompt (None for none)")
        merged: dict[object, list[iv.Intervention]] = {}
        for row, entry in enumerate(value):
            spec = as_interventions(entry, scale=scale, positions=positions)
            for site, item in (spec or {}).items():
                scoped = [i.for_rows(row) for i in iv.as_intervention_list(item, site=str(site))]
                merged.setdefault(site, []).extend(scoped)
        return merged
    raise ValueError(
        f"expected a dict {{site: intervention}}, a SteeringVector, or a list of them (one per prompt), "
        f"got {type(value).__name__}"
    )
