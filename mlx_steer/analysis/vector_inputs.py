"""The user's inputs as the analyses and evaluations take them: a direction (raw array or a SteeringVector's
direction at a site) with its resolved site key, and prompts in batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..engine import interventions as iv

if TYPE_CHECKING:
    from ..engine.paths import Site
    from ..engine.model import Steerable

T = TypeVar("T")


def is_vector_set(value: object) -> bool:
    """A SteeringVector (duck-typed: anything with per-site ``directions``)."""
    return isinstance(getattr(value, "directions", None), Mapping)


def site_key(model: Steerable, site: str | Site, hook_point: str | None = None) -> str:
    """Canonical key of ``site``; a bare path takes ``hook_point`` (a SteeringVector's)."""
    s = model.resolve(site)
    if hook_point is not None and isinstance(site, str) and ":" not in site:
        s = dataclasses.replace(s, point=hook_point)
    return s.key


def directions(model: Steerable, vector: Any) -> dict[str, object]:
    """A SteeringVector's directions keyed by resolved module path."""
    return {model.resolve_path(k): v for k, v in vector.directions.items()}


def vector_hook_point(vector: object) -> str:
    """Where a SteeringVector's directions act (``output`` for a raw array)."""
    return getattr(vector, "hook_point", "output")


def pick(model: Steerable, vector: object, site: str | Site | None) -> tuple[str | None, np.ndarray]:
    """(site key or None, float32 (D,) direction) from a SteeringVector + site or a raw array."""
    if not is_vector_set(vector):
        d = iv.as_vector(vector, what="direction")
        return (None if site is None else site_key(model, site)), d
    dirs, point = directions(model, vector), vector_hook_point(vector)
    if site is None:
        if len(dirs) != 1:
            raise ValueError(f"this SteeringVector has {len(dirs)} sites; pass site= one of {', '.join(dirs)}")
        path = next(iter(dirs))
        return site_key(model, path, point), iv.as_vector(dirs[path], what=f"direction at {path}")
    path = model.resolve(site).path
    if path in dirs:
        return site_key(model, site, point), iv.as_vector(dirs[path], what=f"direction at {path}")
    raise ValueError(f"SteeringVector has no direction at {path!r} ({site!r}); it has: {', '.join(dirs)}")


def unit_direction(model: Steerable, site: str | Site, direction: object) -> tuple[str, np.ndarray]:
    """(site key, unit (D,) direction) to read ``site`` along."""
    key, d = pick(model, direction, site)
    n = float(np.linalg.norm(d))
    if n == 0.0:
        raise ValueError("direction has zero norm")
    return key or site_key(model, site), (d / n).astype(np.float32)


def prompt_list(prompts: str | Sequence[T]) -> list:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("empty prompt list; pass at least one prompt")
    return items


def batches(items: list[T], batch_size: int) -> list[list[T]]:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def layer_direction(model: Steerable, vector: object, layer: int | str,
                    *, ndim: tuple[int, ...] = (1,)) -> tuple[str, np.ndarray]:
    """(site key, direction) to steer ``layer`` with (``ndim=(1, 2)`` also takes ActAdd's
    front-aligned (n, D) tensors)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer, str)):
        raise TypeError(f"layers must be layer indices or site paths, got {layer!r}")
    site = layer if isinstance(layer, str) else f"layers.{layer}"
    if not is_vector_set(vector):
        return site_key(model, site), iv.as_vector(vector, what="steering vector", ndim=ndim)
    dirs, point = directions(model, vector), vector_hook_point(vector)
    path = model.resolve(site).path
    if path in dirs:
        return site_key(model, site, point), iv.as_vector(dirs[path], what=f"direction at {path}", ndim=ndim)
    if len(dirs) == 1:
        return site_key(model, site, point), iv.as_vector(next(iter(dirs.values())), what="direction", ndim=ndim)
    raise ValueError(f"SteeringVector has no direction at layer {layer!r} ({path}); it has: {', '.join(dirs)}")
