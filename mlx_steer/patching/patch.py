"""The public patching verbs: :func:`activation_patching`, :func:`attribution_patching`, and
:func:`patch` (either or both, with a logit-difference metric from a target and a foil token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..engine.gradients import logit_diff
from ..engine.logit_positions import LogitsSpec
from .activation import activation_rows
from .attribution import attribution_rows
from .pair import single_token
from .sweep import prepare
from .table import METHODS, PatchRow, PatchTable

if TYPE_CHECKING:
    from ..engine.gradients import Metric
    from ..engine.model import Steerable

__all__ = ["activation_patching", "attribution_patching", "patch"]

Prompt = str | Sequence[int]


def activation_patching(model: Steerable, clean: Prompt, corrupted: Prompt, metric: Metric, *,
                        sites: str | Sequence[str] = "resid", positions: object = "each",
                        aligned: Sequence[tuple[int, int]] | None = None, batch_size: int = 32,
                        chat: bool = False) -> PatchTable:
    """Patch the clean activation into the corrupted run at each (site, position) and measure.

    Args:
        model: Any backend's model.
        clean: The prompt whose behaviour is to be found (text or token ids).
        corrupted: The prompt that lacks it; the same number of tokens, or see ``aligned``.
        metric: ``metric(logits) -> (B,)`` per row of the backend's (B, L, V) logits, e.g.
            :func:`~mlx_steer.engine.gradients.logit_diff`.
        sites: ``"resid"`` (each layer's output), ``"attn"``, ``"mlp"``, ``"heads"`` (each attention
            head's slice of its output projection input, labelled ``L{layer}H{head}``), site keys,
            or a list of those.
        positions: ``"each"`` (a cell per position), ``"all"`` (a cell per site, every position at
            once), or a list of corrupted positions.
        aligned: ``(clean position, corrupted position)`` pairs to patch (required when the prompts
            have different lengths).
        batch_size: Cells per forward.
        chat: Wrap both prompts as chat user turns.

    Returns:
        A :class:`~mlx_steer.patching.table.PatchTable` of ``activation`` rows.

    Raises:
        ValueError: prompts of different lengths without ``aligned``, unknown sites or positions, a
            metric that does not give one finite value per row. The model is left as it was.
    """
    return patch(model, clean, corrupted, metric=metric, method="activation", sites=sites, positions=positions,
                 aligned=aligned, batch_size=batch_size, chat=chat)


def attribution_patching(model: Steerable, clean: Prompt, corrupted: Prompt, metric: Metric, *,
                         sites: str | Sequence[str] = "resid", positions: object = "each",
                         aligned: Sequence[tuple[int, int]] | None = None, chat: bool = False) -> PatchTable:
    """Estimate every cell of :func:`activation_patching` as ``(clean - corrupted) · grad`` at the
    corrupted run: the clean forward, and one forward and backward of the corrupted prompt.
    Options as for :func:`activation_patching`; returns ``attribution`` rows."""
    return patch(model, clean, corrupted, metric=metric, method="attribution", sites=sites, positions=positions,
                 aligned=aligned, chat=chat)


def patch(model: Steerable, clean: Prompt, corrupted: Prompt, *, metric: Metric | None = None,
          target: str | int | None = None, foil: str | int | None = None, method: str = "both",
          sites: str | Sequence[str] = "resid", positions: object = "each",
          aligned: Sequence[tuple[int, int]] | None = None, batch_size: int = 32, chat: bool = False) -> PatchTable:
    """Activation patching, attribution patching, or both (then :attr:`PatchTable.correlation` says
    how well the estimate follows the real thing).

    Args:
        metric: As for :func:`activation_patching`; or give ``target`` and ``foil`` (single tokens,
            e.g. ``" Paris"`` and ``" Rome"``, or ids) for their logit difference at the last position.
        method: ``activation``, ``attribution`` or ``both``.
        sites: As for :func:`activation_patching` (so are ``positions``, ``aligned``, ``batch_size``, ``chat``).

    Raises:
        ValueError: as for :func:`activation_patching`; an unknown method; neither or both of
            ``metric`` and ``target``/``foil``.
    """
    if method not in (*METHODS, "both"):
        raise ValueError(f"method {method!r} unknown; valid: activation, attribution, both")
    keep: LogitsSpec = True
    if metric is None:
        if target is None or foil is None:
            raise ValueError("give a metric, or target and foil tokens (their logit difference is the metric)")
        metric = logit_diff(single_token(model, target, "target"), single_token(model, foil, "foil"))
        keep = "last"  # all that metric reads: the unembedding skips the other positions
    elif target is not None or foil is not None:
        raise ValueError("give a metric or target and foil, not both")
    sweep = prepare(model, clean, corrupted, metric, sites=sites, positions=positions, aligned=aligned, chat=chat,
                    logits=keep)
    rows: list[PatchRow] = []
    corrupted_metric = None
    if method in ("activation", "both"):
        corrupted_metric, found = activation_rows(model, sweep, metric, batch_size=batch_size, logits=keep)
        rows.extend(found)
    if method in ("attribution", "both"):
        value, found = attribution_rows(model, sweep, metric, logits=keep)
        corrupted_metric = value if corrupted_metric is None else corrupted_metric
        rows.extend(found)
    assert corrupted_metric is not None
    info = {"metric": getattr(metric, "__name__", "metric"), "sites": str(sites), "positions": str(positions),
            "clean_tokens": str(len(sweep.pair.clean)), "corrupted_tokens": str(len(sweep.pair.corrupted))}
    return PatchTable(tuple(rows), sweep.clean_metric, corrupted_metric, info)
