"""SAELens / TransformerLens hook names as mlx_steer sites: ``blocks.N.hook_resid_post`` is what flows out of
decoder layer N (``layers.N``), ``blocks.N.hook_resid_pre`` what flows in (``layers.N:input``)."""

from __future__ import annotations

import re

__all__ = ["HOOKS", "hook_name_of", "site_of_hook"]

HOOKS = {
    "hook_resid_post": "layers.{n}",
    "hook_resid_pre": "layers.{n}:input",
    "hook_mlp_out": "layers.{n}.mlp",
}


def site_of_hook(hook_name: str) -> str:
    """The site a hook name reads (ValueError naming the hook and the ones that map)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+)", hook_name or "")
    if m is None or m.group(2) not in HOOKS:
        raise ValueError(f"SAE hook {hook_name!r} has no mlx_steer site; known: "
                         f"{', '.join(f'blocks.N.{h}' for h in HOOKS)} (or give site= yourself)")
    return HOOKS[m.group(2)].format(n=int(m.group(1)))


def hook_name_of(site: str) -> str | None:
    """The hook name of ``layers.N``-style sites (None for others)."""
    for hook, pattern in HOOKS.items():
        regex = "^" + re.escape(pattern).replace(r"\{n\}", r"(\d+)") + "$"
        m = re.match(regex, site)
        if m:
            return f"blocks.{m.group(1)}.{hook}"
    return None
