"""Conditional steering (CAST, Lee et al. 2024): an intervention that acts on a row only when that
row's prompt is about something, as its hidden state says.

A :class:`Condition` reads one site's activation over a row's prompt (the mean over its tokens, or
its last token), measures it along a direction (the projection on the unit direction, or the cosine
with it), and compares the result with a threshold. Conditions combine with ``&``, ``|`` and ``~``
(e.g. ``b1.when(c1)``, ``b2.when(~c1 & c2)``: one of several behaviours). ``intervention.when(rule)``
gates an intervention: it acts on a row once that row's prompt has been read and only where the rule
holds, so on generated tokens; rows keep their own decision in every batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .host_array import as_vector
from .paths import HOOK_POINTS, Site

if TYPE_CHECKING:
    from .paths import PathResolver

__all__ = ["AllOf", "AnyOf", "Condition", "Not", "Rule", "condition"]

COMPARES = (">", "<")
READS = ("mean", "last")
MEASURES = ("projection", "cosine")


class Rule:
    """Something that holds or not for a row, given its conditions' measured values."""

    def leaves(self) -> Iterator[Condition]:
        raise NotImplementedError

    def holds(self, values: dict[int, float]) -> bool:
        """Whether it holds, given each leaf's value (keyed by ``id(leaf)``)."""
        raise NotImplementedError

    def resolved(self, resolver: PathResolver) -> Rule:
        raise NotImplementedError

    def __and__(self, other: Rule) -> Rule:
        return AllOf((self, _rule(other)))

    def __or__(self, other: Rule) -> Rule:
        return AnyOf((self, _rule(other)))

    def __invert__(self) -> Rule:
        return Not(self)


def _rule(value: object) -> Rule:
    if not isinstance(value, Rule):
        raise ValueError(f"conditions combine with conditions (mlx_steer.interventions.condition), got "
                         f"{type(value).__name__}")
    return value


@dataclass(frozen=True, eq=False)
class Condition(Rule):
    """``measure(read(site over the prompt), direction) compare threshold``; build with :func:`condition`."""

    site: str | Site
    direction: np.ndarray
    threshold: float
    compare: str = ">"
    read: str = "mean"
    measure: str = "cosine"
    name: str = "condition"

    def leaves(self) -> Iterator[Condition]:
        yield self

    def holds(self, values: dict[int, float]) -> bool:
        v = values.get(id(self))
        return v is not None and (v > self.threshold if self.compare == ">" else v < self.threshold)

    def resolved(self, resolver: PathResolver) -> Condition:
        return self if isinstance(self.site, Site) else replace(self, site=resolver.resolve(self.site))

    def value(self, total: np.ndarray, count: float, last: np.ndarray) -> float:
        """This condition's measurement of a row from its prompt's activation sum, token count and last token."""
        x = (total / max(count, 1.0)) if self.read == "mean" else last
        x = x.astype(np.float64)
        p = float(x @ self.direction)
        if self.measure == "projection":
            return p
        norm = float(np.linalg.norm(x))
        return p / norm if norm > 0 else 0.0


@dataclass(frozen=True, eq=False)
class AllOf(Rule):
    rules: tuple[Rule, ...]

    def leaves(self) -> Iterator[Condition]:
        for r in self.rules:
            yield from r.leaves()

    def holds(self, values: dict[int, float]) -> bool:
        return all(r.holds(values) for r in self.rules)

    def resolved(self, resolver: PathResolver) -> Rule:
        return AllOf(tuple(r.resolved(resolver) for r in self.rules))


@dataclass(frozen=True, eq=False)
class AnyOf(AllOf):
    def holds(self, values: dict[int, float]) -> bool:
        return any(r.holds(values) for r in self.rules)

    def resolved(self, resolver: PathResolver) -> Rule:
        return AnyOf(tuple(r.resolved(resolver) for r in self.rules))


@dataclass(frozen=True, eq=False)
class Not(Rule):
    rule: Rule

    def leaves(self) -> Iterator[Condition]:
        yield from self.rule.leaves()

    def holds(self, values: dict[int, float]) -> bool:
        # an unread condition makes neither it nor its negation hold: nothing acts before the prompt is read
        if any(id(leaf) not in values for leaf in self.rule.leaves()):
            return False
        return not self.rule.holds(values)

    def resolved(self, resolver: PathResolver) -> Rule:
        return Not(self.rule.resolved(resolver))


def condition(direction: object, *, site: str, threshold: float, compare: str = ">", read: str = "mean",
              measure: str = "cosine", name: str = "condition") -> Condition:
    """A condition on a row's prompt (see the module doc).

    Args:
        direction: (D,) direction at ``site`` (normalized here), e.g. a mean difference between
            prompts that should and should not trigger the behaviour.
        site: Where to read (``layers.6``...).
        threshold: The value to compare with.
        compare: ``">"`` (holds above the threshold) or ``"<"``.
        read: ``"mean"`` over the prompt's tokens, or its ``"last"`` token.
        measure: ``"cosine"`` with the direction, or ``"projection"`` on the unit direction.
        name: How reports name it.

    Raises:
        TypeError: a threshold that is not a real number (None, a string, a bool).
        ValueError: a zero or non-finite direction, a non-finite threshold, a site that is not a
            ``path[:input|:output]`` string, an unknown compare, read or measure.
    """
    d = as_vector(direction, what="condition direction").astype(np.float64)
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError("condition direction has zero norm")
    for value, valid, what in ((compare, COMPARES, "compare"), (read, READS, "read"), (measure, MEASURES, "measure")):
        if value not in valid:
            raise ValueError(f"unknown condition {what} {value!r}; valid: {', '.join(map(repr, valid))}")
    t = _threshold(threshold)
    _check_site(site)
    if not isinstance(name, str) or not name:
        raise ValueError(f"condition name must be a non-empty string, got {name!r}")
    unit = d / norm
    unit.setflags(write=False)
    return Condition(site, unit, t, compare, read, measure, name)


def _threshold(value: object) -> float:
    """A real, finite number (a bool or a numeric string is a mistake, not a threshold)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"condition threshold must be a real number, got {type(value).__name__} {value!r}")
    t = float(value)
    if not np.isfinite(t):
        raise ValueError(f"condition threshold must be finite, got {value!r}")
    return t


def _check_site(site: object) -> None:
    """A site is a Site or ``path[:input|:output]`` (the path resolves on the model when planned)."""
    if isinstance(site, Site):
        return
    if not isinstance(site, str) or not site.partition(":")[0]:
        raise ValueError(f"condition site must be a site string like 'layers.6' or 'layers.6:input', got {site!r}")
    _, sep, point = site.partition(":")
    if sep and point not in HOOK_POINTS:
        raise ValueError(f"unknown hook point {point!r} in condition site {site!r}; valid: {', '.join(HOOK_POINTS)}")
