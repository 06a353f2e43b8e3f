"""Calibration: a vector's coefficient per site at which steering costs a chosen KL budget, and how it
was measured; stored in the vector (and its file) so strengths can be given in calibrated units.

A site's coefficient ``c`` is the scale at which adding ``c * direction`` at that site alone moves the
model's next-token distributions, over short unsteered rollouts on neutral prompts, by ``target_kl``
nats (the mean, or a percentile, of per-token KL(p_unsteered || p_steered)); see
:func:`mlx_steer.analysis.kl_calibration.calibrate`. Strength 1 in calibrated units is that
coefficient: :func:`~mlx_steer.vectors.calibrated_units.calibrated_vector` turns a calibrated vector into the raw vector to steer with.

In a vector file it is one metadata entry, ``calibration``, holding :meth:`Calibration.to_json`;
files without it load with ``calibration=None`` and readers that predate it ignore the entry.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


__all__ = ["Calibration", "check_statistic"]

_PERCENTILE = re.compile(r"p(100|[1-9]?[0-9](\.[0-9]+)?)")


def check_statistic(statistic: object) -> str:
    """``"mean"`` or a percentile ``"pNN"`` (``"p90"``, ``"p99.5"``; 0..100) of the per-token KLs.

    Raises:
        ValueError: anything else, naming it and the valid forms.
    """
    if statistic == "mean" or (isinstance(statistic, str) and _PERCENTILE.fullmatch(statistic)):
        return str(statistic)
    raise ValueError(f"unknown KL statistic {statistic!r}; valid: 'mean' or a percentile 'p0'..'p100' (e.g. 'p90')")


@dataclass(frozen=True)
class Calibration:
    """How strongly to steer with a vector: per site, the coefficient reaching a KL budget.

    Attributes:
        coefficients: Site path -> coefficient (each measured steering that site alone).
        target_kl: The budget in nats.
        statistic: ``"mean"`` or a percentile ``"pNN"`` of per-token KL over the rollout tokens.
        achieved_kl: Site path -> the statistic measured at its coefficient.
        positions: Where the calibration steered (e.g. ``"all"``).
        prompts_sha256: SHA-256 of the neutral prompts (JSON list), to tell prompt sets apart.
        n_prompts: How many prompts.
        rollout_tokens: Tokens generated per prompt by the unsteered model.
        temp: The rollouts' sampling temperature (0: greedy).
        seed: The rollouts' sampling seed.
        chat: Whether prompts were chat user turns.
        backend: The model class that measured it (informational).
        model_id: The model it was measured on (informational).
    """

    coefficients: Mapping[str, float]
    target_kl: float
    statistic: str = "mean"
    achieved_kl: Mapping[str, float] = field(default_factory=dict)
    positions: str = "all"
    prompts_sha256: str = ""
    n_prompts: int = 0
    rollout_tokens: int = 0
    temp: float = 0.0
    seed: int = 0
    chat: bool = True
    backend: str = ""
    model_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("coefficients", "achieved_kl"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValueError(f"calibration {name} must map site paths to numbers, got {type(value).__name__}")
            bad = [f"{k!r}: {v!r}" for k, v in value.items()
                   if not (isinstance(k, str) and k and _finite(v) and (name != "coefficients" or float(v) > 0))]
            if bad:
                what = "positive finite numbers" if name == "coefficients" else "finite numbers"
                raise ValueError(f"calibration {name} must map site paths to {what}; bad: {', '.join(bad)}")
            object.__setattr__(self, name, MappingProxyType({k: float(v) for k, v in value.items()}))
        if not self.coefficients:
            raise ValueError("a calibration needs at least one site's coefficient")
        if not (_finite(self.target_kl) and float(self.target_kl) > 0):
            raise ValueError(f"target_kl must be a positive finite number of nats, got {self.target_kl!r}")
        object.__setattr__(self, "target_kl", float(self.target_kl))
        check_statistic(self.statistic)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.coefficients)

    def to_dict(self) -> dict[str, Any]:
        return {"coefficients": dict(self.coefficients), "target_kl": self.target_kl, "statistic": self.statistic,
                "achieved_kl": dict(self.achieved_kl), "positions": self.positions,
                "prompts_sha256": self.prompts_sha256, "n_prompts": self.n_prompts,
                "rollout_tokens": self.rollout_tokens, "temp": self.temp, "seed": self.seed, "chat": self.chat,
                "backend": self.backend, "model_id": self.model_id}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Read :meth:`to_json` (unknown keys, from newer versions, are ignored).

        Raises:
            ValueError: not a JSON object of a calibration.
        """
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"calibration metadata is not JSON ({exc}): {text[:200]!r}") from None
        if not isinstance(doc, dict) or "coefficients" not in doc or "target_kl" not in doc:
            raise ValueError(f"calibration metadata lacks coefficients and target_kl: {text[:200]!r}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})

    def renamed(self, mapping: Mapping[str, str]) -> Calibration:
        """The calibration with site paths renamed ``old -> new``."""
        return self._with(coefficients={mapping.get(s, s): c for s, c in self.coefficients.items()},
                          achieved_kl={mapping.get(s, s): k for s, k in self.achieved_kl.items()})

    def restricted(self, sites: tuple[str, ...]) -> Calibration | None:
        """The calibration of ``sites`` only (None when it has none of them)."""
        kept = {s: c for s, c in self.coefficients.items() if s in sites}
        if not kept:
            return None
        return self._with(coefficients=kept, achieved_kl={s: k for s, k in self.achieved_kl.items() if s in sites})

    def rescaled(self, factors: Mapping[str, float]) -> Calibration:
        """The calibration of a vector whose direction at each site was multiplied by ``factors[site] > 0``
        (the same steering needs ``coefficient / factor``)."""
        return self._with(coefficients={s: c / factors.get(s, 1.0) for s, c in self.coefficients.items()})

    def _with(self, **changes: Any) -> Calibration:
        return Calibration(**(self.to_dict() | changes))

    def __reduce__(self) -> tuple:  # mappingproxy fields do not pickle
        return Calibration.from_json, (self.to_json(),)


def _finite(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))
