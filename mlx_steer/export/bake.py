"""Which interventions are exactly a change of weights, and that change (backend-neutral numpy).

Two kinds bake exactly; anything else is refused by name before anything is written:

- ``project_out(u)`` on the output of a linear layer or an embedding: ``W <- W - u (u^T W)`` and
  ``b <- b - u (u . b)`` (the standard weight orthogonalization; on every residual write it is
  directional ablation, see :func:`~mlx_steer.export.ablation.directional_ablation`);
- ``add_vector(v, scale)`` on a decoder layer's output: ``scale * v`` added to the bias of the layer's
  last residual write (its MLP's last projection), a bias the architecture has or a config flag gives;
- ``add_vector(v, scale)`` on an attention output projection's input (head steering, ITI):
  ``scale * W v`` added to that projection's bias (the same rule: its own or a config flag's).

All act on every position of every row, so only ``positions="all"`` without ``for_rows`` or a
condition bakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import interventions as iv
from ..engine.plan import as_interventions, plan_sites
from .architectures import architecture
from .edit import Baked, Dense

if TYPE_CHECKING:
    from ..engine.protocols import Backend

__all__ = ["Baked", "Dense", "bake"]

BAKEABLE = ("project_out on the output of a linear layer or embedding, add_vector on a decoder layer's output "
            "or an attention output projection's input, all with positions='all', no for_rows and no condition")


def bake(backend: Backend, interventions: Mapping | Any) -> Baked:
    """The weight changes that make ``interventions`` part of the model.

    Raises:
        ValueError: an intervention that cannot be baked exactly (naming it, its site and why).
    """
    plans = plan_sites(backend.resolver, interventions=as_interventions(interventions), record=None)
    if not plans:
        raise ValueError(f"nothing to bake: give interventions ({BAKEABLE})")
    out = Baked()
    adds: list[tuple[str, iv.AddVector, str]] = []
    head_adds: list[tuple[str, iv.AddVector, str]] = []
    for key, plan in plans.items():
        for spec in plan.interventions:
            where = f"{type(spec).__name__} at {key}"
            if spec.rows is not None:
                raise ValueError(f"{where} is scoped to rows {sorted(spec.rows)}: a weight acts on every row; "
                                 f"bakeable: {BAKEABLE}")
            if spec.positions.kind != "all":
                raise ValueError(f"{where} acts on positions {spec.positions.kind!r}: a weight acts on every "
                                 f"position; bakeable: {BAKEABLE}")
            if spec.condition is not None:
                raise ValueError(f"{where} is gated by a condition: a weight acts on every prompt; bakeable: {BAKEABLE}")
            if plan.site.point != "output":
                if isinstance(spec, iv.AddVector) and spec.vector.ndim == 1 and \
                        backend.site_heads(plan.site.path, plan.site.point) is not None:
                    head_adds.append((key, spec, plan.site.path))
                    continue
                raise ValueError(f"{where} acts on a module's input; bakeable: {BAKEABLE}")
            if isinstance(spec, iv.ProjectOut):
                dense = out.modules.get(plan.site.path) or backend.dense(plan.site.path)
                _check_width(backend, f"the direction of {where}", spec.direction, dense.weight.shape[0],
                             f"{plan.site.path}'s output")
                out.modules[plan.site.path] = _orthogonalized(dense, spec.direction)
                out.edits.append({"kind": "project_out", "site": key, "direction": _digest(spec.direction)})
                tied = backend.tied_embedding
                if tied is not None and plan.site.path in (tied, backend.unembedding_path):
                    out.untie = True  # the embedding is the head too: write them apart, only one edited
            elif isinstance(spec, iv.AddVector) and spec.vector.ndim == 1:
                adds.append((key, spec, plan.site.path))
            else:
                kind = "a front-aligned add_vector" if isinstance(spec, iv.AddVector) else type(spec).__name__
                raise ValueError(f"{kind} at {key} cannot be baked into weights exactly; bakeable: {BAKEABLE}")
    if out.untie and not backend.can_untie:
        raise ValueError(f"the embedding {backend.tied_embedding} is also this model's unembedding and its "
                         f"{backend.model_type} architecture cannot write them apart in the framework's format, so "
                         "an edited embedding would change the logits too; leave the embedding out")
    for key, spec, path in head_adds:  # through the projection's edited weights: its input comes before them
        _add_head_bias(backend, out, key, spec, path)
    for key, spec, path in adds:  # after every module's own edits: a layer's output comes after them
        _add_bias(backend, out, key, spec, path)
    return out


def _check_width(backend: Backend, what: str, v: np.ndarray, width: int, site: str) -> None:
    if v.shape != (width,):
        raise ValueError(f"{what} has width {v.shape[-1] if v.ndim else 0} (shape {v.shape}); {site} is {width} wide "
                         f"(this model's hidden size is {backend.hidden_size})")


def _orthogonalized(dense: Dense, direction: np.ndarray) -> Dense:
    u = direction.astype(np.float64)
    w = dense.weight.astype(np.float64)
    w = w - np.outer(u, u @ w)
    b = None if dense.bias is None else dense.bias.astype(np.float64)
    b = None if b is None else b - u * float(u @ b)
    return Dense(w.astype(np.float32), None if b is None else b.astype(np.float32))


def _add_bias(backend: Backend, out: Baked, key: str, spec: iv.AddVector, path: str) -> None:
    where = f"add_vector at {key}"
    if path not in backend.layer_paths:
        raise ValueError(f"{where} is not on a decoder layer's output (a bias there needs the layer's last "
                         f"residual write); bakeable: {BAKEABLE}")
    _check_width(backend, f"the vector of {where}", spec.vector, backend.hidden_size, f"{path}'s output")
    arch = architecture(backend.model_type, what=f"baking {where}")
    if arch.post_norms:
        raise ValueError(f"{where} cannot be baked: {backend.model_type} normalizes its MLP output before adding it "
                         "to the residual stream, so no bias adds a fixed vector to the layer's output")
    target = f"{path}.{arch.mlp_out}"
    dense = out.modules.get(target) or backend.dense(target)
    bias = _bias_or_given(backend, out, dense, arch.mlp_bias_flag, arch.mlp_bias_modules, where=where, path=target)
    added = (bias.astype(np.float64) + float(spec.scale) * spec.vector.astype(np.float64)).astype(np.float32)
    out.modules[target] = replace(dense, bias=added)
    out.edits.append({"kind": "add_vector", "site": key, "scale": float(spec.scale), "written_to": f"{target}.bias",
                      "vector": _digest(spec.vector)})


def _bias_or_given(backend: Backend, out: Baked, dense: Dense, flag: str | None, modules: tuple[str, ...], *, where: str,
                   path: str) -> np.ndarray:
    """``dense``'s bias; zeros when it has none and the architecture's config ``flag`` gives it one
    (set in the exported config, with the zero biases the flag brings to ``modules``)."""
    if dense.bias is not None:
        return dense.bias
    if flag is None:
        raise ValueError(f"{where} cannot be baked: {path} has no bias and {backend.model_type} has no config "
                         "flag that gives it one, so the plain framework could not load the added vector")
    out.config[flag] = True
    _give_biases(backend, out, modules)
    return np.zeros(dense.weight.shape[0], dtype=np.float32)


def _add_head_bias(backend: Backend, out: Baked, key: str, spec: iv.AddVector, path: str) -> None:
    """``scale * W v`` added to the bias of the attention output projection at ``path``."""
    where = f"add_vector at {key}"
    arch = architecture(backend.model_type, what=f"baking {where}")
    layer = next((p for p in backend.layer_paths if path == f"{p}.{arch.attention_out}"), None)
    if layer is None:
        raise ValueError(f"{where} is not on a decoder layer's {arch.attention_out} input; bakeable: {BAKEABLE}")
    dense = out.modules.get(path) or backend.dense(path)
    _check_width(backend, f"the vector of {where}", spec.vector, dense.weight.shape[1], f"{path}'s input")
    bias = _bias_or_given(backend, out, dense, arch.attention_bias_flag, arch.attention_bias_modules, where=where,
                          path=path)
    added = dense.weight.astype(np.float64) @ (float(spec.scale) * spec.vector.astype(np.float64))
    out.modules[path] = replace(dense, bias=(bias.astype(np.float64) + added).astype(np.float32))
    out.edits.append({"kind": "add_vector", "site": key, "scale": float(spec.scale), "written_to": f"{path}.bias",
                      "vector": _digest(spec.vector)})


def _give_biases(backend: Backend, out: Baked, modules: tuple[str, ...]) -> None:
    """Every layer's ``modules`` get a (zero, unless edited) bias, as the config flag set gives them."""
    new = [f"{layer}.{m}" for layer in backend.layer_paths for m in modules]
    out.bias_modules += [p for p in new if p not in out.bias_modules]


def _digest(v: np.ndarray) -> dict[str, Any]:
    import hashlib

    a = np.ascontiguousarray(v, dtype=np.float32)
    return {"size": int(a.size), "norm": float(np.linalg.norm(a)), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
