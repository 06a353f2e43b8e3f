"""Directional ablation ("abliteration", Arditi et al. 2024): a direction removed from every write to
the residual stream, so no layer can represent it; as interventions that run in-process and bake
exactly into weights (:meth:`~mlx_steer.engine.model.Steerable.export`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..engine import interventions as iv
from ..engine.model_sizes import position_table_path
from .architectures import architecture

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["directional_ablation", "residual_writes"]


def residual_writes(model: Steerable) -> list[str]:
    """Every module whose output is added to the residual stream: the token embedding (and a learned
    position table), then each layer's attention output and MLP output projections.

    Raises:
        ValueError: an architecture whose writes are not those projections (gemma2's post-norms), or
            one not known.
    """
    arch = architecture(model.backend.model_type, what="directional ablation")
    if arch.post_norms:
        raise ValueError(f"directional ablation by weights needs the residual writes to be linear layers; "
                         f"{model.backend.model_type} normalizes its attention and MLP outputs before adding them")
    embeds = [model.backend.embedding_path]
    table = position_table_path(list(model.modules))
    embeds += [table] if table is not None else []
    missing = [p for layer in model.layer_paths for p in (f"{layer}.{arch.attention_out}", f"{layer}.{arch.mlp_out}")
               if p not in model.modules]
    if missing:
        raise ValueError(f"modules {missing[:3]} of model_type {model.backend.model_type!r} are not in this model")
    return embeds + [f"{layer}.{m}" for layer in model.layer_paths for m in (arch.attention_out, arch.mlp_out)]


def directional_ablation(model: Steerable, direction: Any, *, embedding: bool = True) -> dict[str, iv.ProjectOut]:
    """``project_out(direction)`` on every residual write (see :func:`residual_writes`).

    Args:
        model: The steerable model.
        direction: (hidden,) direction (normalized here), e.g. a refusal direction.
        embedding: Also orthogonalize the embeddings (False keeps a tied embedding shared with the head).

    Returns:
        ``{site: project_out}``: for ``model.run/generate(interventions=...)`` and ``model.export``.
    """
    writes = residual_writes(model)
    if not embedding:
        writes = writes[len(writes) - 2 * model.num_layers:]
    out = iv.project_out(direction)
    if out.direction.shape != (model.hidden_size,):
        raise ValueError(f"direction has shape {out.direction.shape}; this model's hidden size is {model.hidden_size}")
    return {path: out for path in writes}
