"""Which sites a patching sweep covers: the residual stream (each decoder layer's output), each layer's
attention output or MLP output (found by the module names the architectures use), or paths the user
names. Each comes as a :class:`PatchSite`: its resolved key and a short label for tables and plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.attention_sites import head_shape, head_z_site

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["COMPONENTS", "PatchSite", "patch_sites"]

# a decoder layer's attention and MLP children, by the names mlx-lm and transformers give them
_CHILDREN = {"attn": ("self_attn", "attn", "attention", "self_attention"),
             "mlp": ("mlp", "feed_forward", "ffn", "block_sparse_moe")}
COMPONENTS = ("resid", "attn", "mlp", "heads")


@dataclass(frozen=True)
class PatchSite:
    """One site of a sweep.

    Attributes:
        key: The resolved site key (``model.layers.3``, ``model.layers.3.mlp``...).
        label: A short name for tables and plots (``resid 3``, ``attn 3``, or the key).
        component: ``resid``, ``attn``, ``mlp``, ``heads``, or ``path`` for a site the user named.
        layer: The decoder layer, None for a user path.
        head: For ``heads``: the attention head (its site, the output projection's input, is shared
            by the layer's heads; the label is ``L{layer}H{head}``).
        columns: For ``heads``: ``(start, stop)``, the head's slice of the site's vector; a cell
            patches only these columns.
    """

    key: str
    label: str
    component: str
    layer: int | None
    head: int | None = None
    columns: tuple[int, int] | None = None


def patch_sites(model: Steerable, sites: str | Sequence[str] = "resid") -> list[PatchSite]:
    """The sites of a sweep: ``"resid"``, ``"attn"``, ``"mlp"`` (every layer), ``"heads"`` (every
    attention head of every layer: its slice of the output projection's input), or site keys, or a
    list mixing both (``["resid", "layers.3.mlp.down_proj"]``).

    Raises:
        ValueError: no sites, an unknown site, or a layer without the named component (naming the
            layer's modules), or a site named twice.
    """
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise ValueError(f"sites is empty; valid: {', '.join(COMPONENTS)} or site keys such as 'layers.0'")
    out: list[PatchSite] = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"a site must be a string ({', '.join(COMPONENTS)} or a site key), got {name!r}")
        if name in COMPONENTS:
            out.extend(_component(model, name))
        else:
            key = model.resolve_key(name)
            out.append(PatchSite(key, key, "path", None))
    keys = [s.key if s.head is None else f"{s.key} head {s.head}" for s in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"sites {dup} are named more than once")
    return out


def _component(model: Steerable, component: str) -> list[PatchSite]:
    if component == "resid":
        return [PatchSite(p, f"resid {i}", "resid", i) for i, p in enumerate(model.layer_paths)]
    if component == "heads":
        return _heads(model)
    out = []
    for i, layer in enumerate(model.layer_paths):
        children = [n[len(layer) + 1:] for n in model.modules if n.startswith(layer + ".")
                    and "." not in n[len(layer) + 1:]]
        found = [c for c in _CHILDREN[component] if c in children]
        if not found:
            raise ValueError(f"layer {i} ({layer}) has no {component} module ({' or '.join(_CHILDREN[component])}); "
                             f"its modules: {', '.join(sorted(children))}; name the path instead")
        out.append(PatchSite(model.resolve_key(f"{layer}.{found[0]}"), f"{component} {i}", component, i))
    return out


def _heads(model: Steerable) -> list[PatchSite]:
    """One site per head: its columns of each layer's output projection input."""
    H = model.backend.n_heads
    if H is None:
        raise ValueError("the model's config gives no attention head count: patching heads needs one")
    out: list[PatchSite] = []
    for i in range(len(model.layer_paths)):
        key, (_, d) = head_z_site(model, i), head_shape(model, i)
        out.extend(PatchSite(key, f"L{i}H{h}", "heads", i, h, (h * d, (h + 1) * d)) for h in range(H))
    return out
