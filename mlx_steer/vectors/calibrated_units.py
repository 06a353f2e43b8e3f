"""Strengths in calibrated units: a calibrated vector turned into the raw vector to steer with, whose
scale 1 is each site's calibrated coefficient (:mod:`mlx_steer.vectors.calibration`)."""

from __future__ import annotations

from .steering_vector import SteeringVector

__all__ = ["calibrated_vector"]


def calibrated_vector(vector: SteeringVector, *, sites: tuple[str, ...] | None = None) -> SteeringVector:
    """The raw vector for strengths in calibrated units: each site's direction times its coefficient
    (strength 1 = the calibrated coefficient), restricted to ``sites`` (resolved paths) when given.

    Raises:
        ValueError: the vector has no calibration, or none for a site it is asked to steer (naming
            the calibrated sites and how to calibrate).
    """
    cal = getattr(vector, "calibration", None)
    if cal is None:
        raise ValueError("calibrated strengths need a calibrated vector, and this vector has no calibration; "
                         "run `mlx-steer calibrate` (or mlx_steer.analysis.calibrate) on it first, or give raw strengths")
    wanted = tuple(vector.sites) if sites is None else tuple(sites)
    missing = [s for s in wanted if s not in cal.coefficients]
    if missing:
        raise ValueError(f"the vector's calibration has no coefficient for {', '.join(missing)}; "
                         f"calibrated sites: {', '.join(cal.sites)}")
    chosen = vector if sites is None else vector.select(list(wanted))
    return chosen.scaled_per_site({s: cal.coefficients[s] for s in wanted}).replace(calibration=None)
