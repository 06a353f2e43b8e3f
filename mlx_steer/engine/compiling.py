"""Compiling plans for a backend: a site's interventions into ops (validated against the site's
size and heads), a site plan into the program that runs there, and a sequence's steering into
ops compiled once, before it joins a batch (:class:`CompiledSteering`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .gating import GatedOp
from .limits import check_length
from .ops import Op, compile_op
from .paths import Site
from .plan import SitePlan, as_interventions, check_plans, plan_sites
from .recording import Recorder
from .site_program import SiteProgram

if TYPE_CHECKING:
    from .protocols import Backend

__all__ = ["CompiledSteering", "compile_at", "compile_steering", "sequence_steering", "site_program"]


def compile_at(backend: Backend, site: Site, spec: Any) -> Op:
    """One intervention as an op at ``site`` (ValueError when it, or its condition, does not fit)."""
    rule = getattr(spec, "condition", None)
    op = compile_op(spec if rule is None else replace(spec, condition=None), xp=backend.xp, site=site.key,
                    dim=backend.site_dim(site.path, site.point), n_heads=backend.site_heads(site.path, site.point))
    if rule is None:
        return op
    for leaf in rule.leaves():
        at = leaf.site
        assert isinstance(at, Site), "plan_sites resolves conditions"
        dim = backend.site_dim(at.path, at.point)
        if dim is None:  # an embedding's input: token ids, nothing to measure along a direction
            raise ValueError(f"condition {leaf.name!r} reads site {at.key!r}, whose activation is not a vector "
                             "(an embedding's input is token ids); read a layer's residual stream, e.g. "
                             "'layers.i' or 'layers.i:input'")
        if leaf.direction.shape[0] != dim:
            raise ValueError(f"condition {leaf.name!r} direction has size {leaf.direction.shape[0]} but site "
                             f"{at.key!r} has size {dim}")
    return GatedOp(op, rule, backend.state)


def site_program(backend: Backend, plan: SitePlan, reduce: str | None) -> SiteProgram:
    """What runs at a planned site: its ops, then its recorder."""
    ops = [compile_at(backend, plan.site, i) for i in plan.interventions]
    rec = None if plan.record is None else Recorder(backend.state, plan.record, reduce, site=plan.site.key)
    return SiteProgram(plan.site, ops, rec, backend.state, record_before=plan.record_before)


@dataclass(frozen=True)
class CompiledSteering:
    """One sequence's interventions, planned, checked and compiled, acting on every row until given
    to one (:meth:`for_row`): what a server resolves once per request and hands to the batch."""

    sites: Mapping[str, tuple[Site, tuple[Op, ...]]]

    @property
    def gated(self) -> bool:
        """Whether a condition gates any of it."""
        return any(isinstance(op, GatedOp) for _, ops in self.sites.values() for op in ops)

    def for_row(self, row: int) -> dict[str, tuple[Site, list[Op]]]:
        """The same ops acting only on batch row ``row`` (a row key); copies, so the compiled
        steering can be given to a row more than once."""
        only = frozenset({int(row)})
        out = {}
        for key, (site, ops) in self.sites.items():
            scoped = []
            for op in ops:
                if op.rows is not None and not only <= op.rows:
                    raise ValueError(f"intervention is already scoped to rows {sorted(op.rows)}; cannot widen "
                                     f"to {sorted(only)}")
                mine = op.fresh() if isinstance(op, GatedOp) else copy.copy(op)
                mine.rows = only
                scoped.append(mine)
            out[key] = (site, scoped)
        return out


def compile_steering(backend: Backend, plans: Mapping[str, SitePlan]) -> CompiledSteering:
    """Compile planned interventions for one sequence (ValueError: one does not fit its site)."""
    sites = {}
    for key, plan in plans.items():
        sites[key] = (plan.site, tuple(compile_at(backend, plan.site, i) for i in plan.interventions))
    return CompiledSteering(sites)


def sequence_steering(backend: Backend, interventions: Any, *, prompt_len: int, max_tokens: int) -> CompiledSteering:
    """One sequence's interventions (``{site: intervention(s)}``, a SteeringVector or None) planned,
    checked against its prompt length and ``max_tokens``, and compiled: what a continuous batch's
    ``insert`` takes as ``steering``.

    Raises:
        ValueError: bad interventions, sites or positions, or a sequence too long for the model.
    """
    check_length(backend.max_positions, prompt_len + max_tokens, "prompt + max_tokens")
    plans = plan_sites(backend.resolver, interventions=as_interventions(interventions), record=None)
    check_plans(plans, limit=prompt_len + max_tokens, prompt_len=prompt_len, what="prompt + max_tokens")
    return compile_steering(backend, plans)
