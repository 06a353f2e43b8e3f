"""Turn a user's ``interventions`` and ``record`` arguments into one plan per resolved site.

Backend-neutral: both backends validate everything here before they patch anything, so bad
input raises before the model is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
            plan(spec).interventions.extend(i for i in ivs if not i.is_noop)
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
                generating: bool = True) -> None:
    """Reject what can never apply, before anything is installed: explicit indices at or past
    ``limit`` (the positions every row reaches), front-aligned tensors longer than the prompt,
    and — in a forward over prompts (``generating=False``) — selectors of generated tokens,
    which would select nothing."""
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
