"""A lens table as a heatmap: layers x positions, the prompt's tokens on the x axis, each cell's
text its top token, its colour the target's probability (without a target: the top token's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .table import LensTable


def lens_heatmap(table: LensTable, *, prompt: int = 0, path: str | Path | None = None) -> Figure:
    """Draw one prompt of ``table``; written to ``path`` (PNG, ...) too when given.

    Raises:
        ValueError: ``prompt`` not in the table.
    """
    if not 0 <= prompt < len(table.tokens):
        raise ValueError(f"prompt {prompt} out of range; valid: 0..{len(table.tokens) - 1}")
    import matplotlib.pyplot as plt

    has_target = any(r.target_prob is not None for r in table.rows if r.prompt == prompt)
    values = table.grid("target_prob" if has_target else "top_prob", prompt)
    layers, pos = table.layers, table.positions(prompt)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(pos), 1.0 + 0.32 * len(layers)))
    im = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
    for r in table.rows:
        if r.prompt == prompt:
            y, x = layers.index(r.layer), pos.index(r.position)
            v = values[y, x]
            ax.text(x, y, repr(r.top_tokens[0])[1:-1][:8], ha="center", va="center", fontsize=7,
                    color="black" if np.isfinite(v) and v > 0.6 else "white")
    toks = table.tokens[prompt]
    ax.set_xticks(range(len(pos)), [f"{repr(toks[i])[1:-1]}\n{i}" for i in pos], fontsize=7)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
    ax.set_xlabel("position (input token)")
    ax.set_ylabel(f"layer ({table.stage})")
    target = next((r.target for r in table.rows if r.prompt == prompt and r.target is not None), None)
    what = f"p({target!r})" if has_target else "p(top token)"
    ax.set_title(f"{table.lens} lens: top token per cell, colour {what}", fontsize=9)
    fig.colorbar(im, ax=ax, label=what)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
