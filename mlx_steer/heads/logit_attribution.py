"""Direct logit attribution: what each component writes to the residual stream, read straight
through the final norm and the unembedding onto one token's logit or a logit difference.

The final residual at the position is the sum of the embeddings (the residual entering layer 0),
each head's write ``z_h · W_O[h]``, each output projection's bias and each MLP's output; the
decomposition is checked against the recorded residual, so an architecture that adds anything
else (gemma2's post-norms of sub-block outputs) is refused, not read wrongly.

The final norm is linearized at the run (TransformerLens' ``apply_ln`` with the cached scale): its
scale is the one computed on the full residual, so a component ``c`` contributes
``(P c) ⊙ g · d``: ``P`` mean-centres (LayerNorm; identity for RMSNorm), ``g`` is the norm's weight
divided by the full residual's scale (gemma's ``1 + w`` included), ``d`` the unembedding row of
the target minus the foil's. A LayerNorm's bias and the unembedding's bias are components of
their own. ``g`` and the bias are read from the model's own norm module (probed at a vector with
the residual's mean square, or variance, so eps is the model's), and the linearization is checked
to give the norm's output on the full residual. Final logit soft-capping (gemma2) is not linear
and is refused; a constant logit scale (cohere, granite) multiplies every component.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..lens.ops import model_device, model_dtype
from ..lens.readout import readout_of
from ..patching.pair import single_token
from ..patching.sites import patch_sites
from ..patching.table import draw_heads
from .head_results import head_z_site, output_weight, split_heads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..engine.model import Steerable

__all__ = ["LogitAttribution", "logit_attribution"]

# a decoder layer child that normalizes a sub-block's output before it is added (gemma2/3, olmo2)
POST_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffw_norm")


@dataclass(frozen=True)
class LogitAttribution:
    """Each component's direct contribution, per prompt row.

    Attributes:
        heads: (B, layers, H) float64: each head's write through the linearized final norm and the
            unembedding direction.
        components: The other components' names: ``embed``, ``attn bias {i}`` (where the output
            projection has one), ``mlp {i}``, ``final norm bias`` (LayerNorm), ``unembed bias``.
        values: (B, len(components)) float64, their contributions.
        logits: (B,) float64, the model's own logit (difference) at the position.
        tokens: The target's and (or None) the foil's token ids.
        positions: (B,) the absolute position read in each row.
    """

    heads: np.ndarray
    components: tuple[str, ...]
    values: np.ndarray
    logits: np.ndarray
    tokens: tuple[int, int | None]
    positions: tuple[int, ...]

    @property
    def total(self) -> np.ndarray:
        """(B,) the sum over every component: equals :attr:`logits` up to float rounding."""
        return self.heads.sum(axis=(1, 2)) + self.values.sum(axis=1)

    def component(self, name: str) -> np.ndarray:
        """(B,) one named component's contribution.

        Raises:
            KeyError: no such component (naming those there are).
        """
        if name not in self.components:
            raise KeyError(f"no component {name!r}; this attribution has {', '.join(self.components)} and the heads")
        return self.values[:, self.components.index(name)]

    def to_dicts(self) -> list[dict]:
        """One dict per (row, component): ``row, component, layer, head, value`` (heads labelled
        ``L{layer}H{head}``)."""
        out = []
        for b in range(self.heads.shape[0]):
            for i, name in enumerate(self.components):
                layer = int(name.rsplit(" ", 1)[1]) if name.startswith(("attn bias", "mlp")) else None
                out.append({"row": b, "component": name, "layer": layer, "head": None,
                            "value": float(self.values[b, i])})
            for (layer, h), v in np.ndenumerate(self.heads[b]):
                out.append({"row": b, "component": f"L{layer}H{h}", "layer": layer, "head": h, "value": float(v)})
        return out

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["row", "component", "layer", "head", "value"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.to_dicts())
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()

    def to_text(self, row: int = 0) -> str:
        """Row ``row``: the logit and the sum, the other components, then the heads (layers down)."""
        b = row
        lines = [f"logit{' difference' if self.tokens[1] is not None else ''} {self.logits[b]:.4f}, "
                 f"sum of components {self.total[b]:.4f}"]
        lines += [f"{name:>16} {v:9.4f}" for name, v in zip(self.components, self.values[b])]
        H = self.heads.shape[2]
        lines.append("heads".rjust(16) + " " + " ".join(f"{h:>8}" for h in range(H)))
        lines += [f"{'layer ' + str(i):>16} " + " ".join(f"{v:8.4f}" for v in r) for i, r in enumerate(self.heads[b])]
        return "\n".join(lines)

    def heatmap(self, row: int = 0, path: str | Path | None = None) -> Figure:
        """Row ``row``'s heads as a layers × heads heatmap (saved to ``path`` when given)."""
        grid = self.heads[row]
        bound = float(np.abs(grid).max()) or 1.0
        what = "logit difference" if self.tokens[1] is not None else "logit"
        return draw_heads(grid, title=f"direct logit attribution per head, row {row}", label=what, path=path,
                          symmetric_to=bound)


def logit_attribution(
    model: Steerable,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    target: str | int,
    foil: str | int | None = None,
    position: int | str = "last",
    chat: bool = False,
) -> LogitAttribution:
    """Direct logit attribution of ``target``'s logit (minus ``foil``'s, when given) at ``position``.

    Args:
        model: A model of either backend, whole in one process.
        prompts: A string, a list of strings, or lists of token ids (left-padded as ``model.run`` pads).
        target: A single token (text such as ``" Paris"``, or an id).
        foil: Another, for the logit difference target − foil; None: the target's logit alone.
        position: ``"last"`` (each row's last token) or an absolute position (0 = a row's first token).
        chat: Wrap each prompt as a chat user turn.

    Returns:
        A :class:`LogitAttribution`; ``result.total`` equals ``result.logits`` (float32 models: within
        1e-4 relative in the tests).

    Raises:
        ValueError: a token that is not one token, a bad position, an architecture whose residual is
            not the sum of these components (post-norms) or whose final norm or logits are not of
            the linearizable kind (soft-capping), named. Nothing is changed on the model.
    """
    backend = model.backend
    readout = readout_of(model)
    if readout.softcap is not None:
        raise ValueError(f"{backend.model_type or 'this model'} soft-caps its final logits (c·tanh(z / c), "
                         f"c = {readout.softcap:g}): logits are not a linear function of the residual, so no "
                         "direct logit attribution sums to them; use patching (mlx_steer.patching) instead")
    _refuse_post_norms(model)
    t = single_token(model, target, "target")
    f = None if foil is None else single_token(model, foil, "foil")
    select = _position(position)
    n = len(backend.layer_paths)
    embed, final = model.resolve_key(f"{model.layer_paths[0]}:input"), model.resolve_key(model.layer_paths[-1])
    heads = [head_z_site(model, i) for i in range(n)]
    mlps = [s.key for s in patch_sites(model, "mlp")]
    trace = model.run(prompts, record=[embed, final, *heads, *mlps], record_positions=select, chat=chat)
    lengths = [int(x) for x in trace.lengths]
    where = [ln - 1 if position == "last" else int(position) for ln in lengths]
    rec = {k: model.to_numpy(trace.activations[k])[:, -1].astype(np.float64) for k in [embed, final, *mlps]}
    logits = model.to_numpy(trace.logits).astype(np.float64)
    L = logits.shape[1]
    at = np.array([L - ln + p for ln, p in zip(lengths, where)])
    row_logits = logits[np.arange(len(at)), at]
    actual = row_logits[:, t] - (0.0 if f is None else row_logits[:, f])

    writes, names, parts = [], ["embed"], [rec[embed]]
    for i, site in enumerate(heads):
        writes.append(split_heads(model, i, model.to_numpy(trace.activations[site])[:, -1])[1].astype(np.float64))
        bias = output_weight(backend, model.resolve(site).path)[1]
        if bias is not None:
            names.append(f"attn bias {i}")
            parts.append(np.broadcast_to(bias.astype(np.float64), rec[final].shape))
        names.append(f"mlp {i}")
        parts.append(rec[mlps[i]])
    x = rec[final]
    summed = parts[0] + sum(w.sum(1) for w in writes) + sum(parts[1:])
    _check(x, summed, model, "the sum of the embeddings, head writes, projection biases and MLP outputs",
           "this architecture adds something else to the residual stream")

    d, unembed_bias = _direction(model, t, f)
    center, g, norm_bias = _linearized_norm(model, readout.norm_path, x)

    def through(c: np.ndarray) -> np.ndarray:  # (B, ..., D) -> (B, ...) contributions
        if center:
            c = c - c.mean(-1, keepdims=True)
        gg = g.reshape(g.shape[0], *([1] * (c.ndim - 2)), g.shape[1])
        return readout.scale * ((c * gg) @ d)

    values = [through(c) for c in parts]
    if center or np.any(norm_bias != 0):
        names.append("final norm bias")
        values.append(np.full(len(x), readout.scale * float(norm_bias @ d)))
    if unembed_bias != 0:
        names.append("unembed bias")
        values.append(np.full(len(x), readout.scale * unembed_bias))
    return LogitAttribution(np.stack([through(w) for w in writes], axis=1), tuple(names),
                            np.stack(values, axis=1), actual, (t, f), tuple(where))


def _position(position: int | str) -> object:
    if position == "last":
        return "last"
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or position < 0:
        raise ValueError(f"position must be 'last' or an absolute position >= 0 (0 = a row's first token), "
                         f"got {position!r}")
    return [int(position)]


def _refuse_post_norms(model: Steerable) -> None:
    for layer in model.layer_paths:
        found = [p for p in POST_NORMS if f"{layer}.{p}" in model.modules]
        if found:
            raise ValueError(f"{model.backend.model_type or 'this model'} normalizes each sub-block's output before "
                             f"adding it to the residual stream ({layer}.{found[0]}): a head's write is not what "
                             "reaches the residual, so direct logit attribution is not supported for it; "
                             "supported: architectures that add attention and MLP outputs as they are "
                             "(llama, qwen2, phi3, gpt2, ...)")


def _check(want: np.ndarray, got: np.ndarray, model: Steerable, what: str, why: str) -> None:
    tol = (1e-4 if "float32" in str(model_dtype(model)) else 3e-2) * max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(want - got).max())
    if not diff <= tol:
        raise ValueError(f"{what} differs from the model's by {diff:.3g} (allowed {tol:.3g}): {why}, so direct "
                         f"logit attribution would not sum to its logits ({model.backend.model_type or 'model'})")


def _direction(model: Steerable, t: int, f: int | None) -> tuple[np.ndarray, float]:
    """The unembedding row of ``t`` minus ``f``'s (D,) float64 and their bias difference, read
    through the model's head (tied or not) a block of basis vectors at a time."""
    D = model.hidden_size
    cols = [t] if f is None else [t, f]
    bias = model.unembed(np.zeros(D, dtype=np.float32)).astype(np.float64)[cols]
    rows = []
    for start in range(0, D, 128):
        eye = np.eye(D, dtype=np.float32)[start:start + 128]
        rows.append(model.unembed(eye).astype(np.float64)[:, cols] - bias)
    w = np.concatenate(rows)  # (D, 1 or 2)
    return (w[:, 0] if f is None else w[:, 0] - w[:, 1]), float(bias[0] - (0.0 if f is None else bias[1]))


def _linearized_norm(model: Steerable, path: str | None, x: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
    """The final norm at the residuals ``x`` (B, D) as ``(P c) ⊙ g + bias``: whether it mean-centres,
    ``g`` (B, D) and the bias (D,), probed through the model's own norm module.

    Raises:
        ValueError: a norm the linearization does not reproduce on ``x`` (named).
    """
    B, D = x.shape
    if path is None:
        return False, np.ones((B, D)), np.zeros(D)
    shift = x + 2.0 * np.abs(x).max(axis=1, keepdims=True) + 1.0
    zero = np.zeros((1, D))
    out = _norm(model, path, np.concatenate([x, shift, zero]))
    fx, fshift, bias = out[:B], out[B:2 * B], out[2 * B]
    center = bool(np.allclose(fx, fshift, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(fx).max()))))
    if center:  # a probe with the residual's mean (0 after centring) and variance, no zero entry
        p = np.where(np.arange(D) % 2 == 0, 1.0, -1.0)
        if D % 2:
            p[-3:] = [1.0, 1.0, -2.0]
        xc = x - x.mean(1, keepdims=True)
        u = p[None] * np.sqrt((xc ** 2).mean(1, keepdims=True) / (p ** 2).mean())
    else:  # a constant vector with the residual's mean square
        u = np.repeat(np.sqrt((x ** 2).mean(1, keepdims=True)), D, axis=1)
    g = (_norm(model, path, u) - bias) / u
    lin = (x - x.mean(1, keepdims=True) if center else x) * g + bias
    _check(fx, lin, model, "the linearized final norm's output", f"its final norm ({path}) is not an RMSNorm "
           "or LayerNorm of the residual")
    return center, g, bias


def _norm(model: Steerable, path: str, x: np.ndarray) -> np.ndarray:
    """The model's module at ``path`` on ``x`` (float64 out), its hooks bypassed."""
    module = model.modules[path]
    dtype = model_dtype(model)
    if model.xp.array_type == "torch.Tensor":
        import torch

        with torch.no_grad():
            t = torch.from_numpy(x.astype(np.float32)).to(model_device(model), dtype)
            return module.forward(t).float().cpu().numpy().astype(np.float64)
    import mlx.core as mx

    from ..backends.mlx import hooks

    with hooks.bypassed(model.modules.values()):
        y = module(mx.array(x.astype(np.float32)).astype(dtype)).astype(mx.float32)
        return np.array(y).astype(np.float64)
