"""Turn a user's ``interventions`` and ``record`` arguments into one plan per resolved site.

Backend-neutral: both backends validate everything here before they patch anything, so bad
input raises before the model is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from . import interventions as iv
from .paths import PathResolver, Site
from .positions import Positions, as_positions

REDUCTIONS = (None, "mean")


@dataclass
class SitePlan:
    site: Site
    interventions: list[iv.Intervention] = field(default_factory=list)
    record: Positions | None = None


def plan_sites(
    resolver: PathResolver,
    *,
    interventions: Mapping | None,
    record: object,
    record_positions: object = "all",
    reduce: str | None = None,
) -> dict[str, SitePlan]:
    """Resolve and validate sites; returns plans keyed by canonical site key, in given order.

    Args:
        resolver: The model's path resolver.
        interventions: ``{site: intervention | callable | [..]}``.
        record: ``None``, a site, a list of sites, or ``{site: positions}``.
        record_positions: Default positions for recorded sites.
        reduce: ``None`` or ``"mean"`` (average the recorded positions per row).

    Raises:
        ValueError: unknown site, bad intervention, bad positions, bad reduce.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; valid: None, 'mean'")
    plans: dict[str, SitePlan] = {}

    def plan(spec: object) -> SitePlan:
        site = resolver.resolve(spec)  # type: ignore[arg-type]
        return plans.setdefault(site.key, SitePlan(site))

    if interventions is not None:
        if not isinstance(interventions, Mapping):
            raise ValueError(f"interventions must be a dict {{site: intervention}}, got {type(interventions).__name__}")
        for spec, value in interventions.items():
            ivs = iv.as_intervention_list(value, site=str(spec))
            plan(spec).interventions.extend(i for i in ivs if not i.is_noop)
    default = as_positions(record_positions)
    if record is None:
        items: list[tuple[object, Positions]] = []
    elif isinstance(record, (str, Site)):
        items = [(record, default)]
    elif isinstance(record, Mapping):
        items = [(k, as_positions(v)) for k, v in record.items()]
    else:
        items = [(k, default) for k in record]  # type: ignore[union-attr]
    for spec, positions in items:
        plan(spec).record = positions
    return plans


def as_interventions(value: object, *, scale: float = 1.0, positions: object = "all") -> Mapping | None:
    """Accept ``{site: intervention}`` or a SteeringVector (anything with ``to_interventions``)."""
    if value is None or isinstance(value, Mapping):
        return value
    if hasattr(value, "to_interventions"):
        return value.to_interventions(scale=scale, positions=positions)
    raise ValueError(f"expected a dict {{site: intervention}} or a SteeringVector, got {type(value).__name__}")
