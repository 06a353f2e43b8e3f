"""The result of a lens: one row per (prompt, layer, position) cell, as CSV, JSON, text and a heatmap
(layers x positions, the prompt's tokens on the x axis, each cell's text its top token, its colour the
target's probability — without a target, the top token's)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LensRow", "LensTable", "lens_heatmap"]

_FLAT = ("prompt", "layer", "position", "token", "target", "target_id", "target_prob", "target_rank", "kl")


@dataclass(frozen=True)
class LensRow:
    """What one layer's residual at one position reads as.

    Attributes:
        prompt: The prompt's index.
        layer: The decoder layer whose output (or input) was read.
        position: Absolute position, counted from the prompt's first real token.
        token: The prompt's token at that position.
        top_tokens: The ``k`` most probable next tokens under the lens, best first.
        top_ids: Their ids.
        top_probs: Their probabilities.
        target: The target token's text (None without targets).
        target_id: Its id.
        target_prob: Its probability under the lens.
        target_rank: Its rank (0: the top token).
        kl: KL(model's final distribution || lens distribution) at this position, in nats.
    """

    prompt: int
    layer: int
    position: int
    token: str
    top_tokens: tuple[str, ...]
    top_ids: tuple[int, ...]
    top_probs: tuple[float, ...]
    target: str | None = None
    target_id: int | None = None
    target_prob: float | None = None
    target_rank: int | None = None
    kl: float = 0.0


@dataclass(frozen=True)
class LensTable:
    """The cells of a lens, prompt-major, then layer, then position.

    Attributes:
        rows: The cells.
        lens: ``"logit"`` or ``"tuned"``.
        stage: ``"output"`` (each layer's output) or ``"input"`` (what enters it).
        tokens: Per prompt, its tokens' texts (the heatmap's axis).
        info: Model and settings, as strings.
    """

    rows: tuple[LensRow, ...]
    lens: str
    stage: str
    tokens: tuple[tuple[str, ...], ...]
    info: Mapping[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted({r.layer for r in self.rows})

    def positions(self, prompt: int = 0) -> list[int]:
        return sorted({r.position for r in self.rows if r.prompt == prompt})

    def cell(self, prompt: int, layer: int, position: int) -> LensRow:
        """The row of one cell.

        Raises:
            KeyError: no such cell (naming what the table has).
        """
        for r in self.rows:
            if (r.prompt, r.layer, r.position) == (prompt, layer, position):
                return r
        raise KeyError(f"no cell (prompt {prompt}, layer {layer}, position {position}); the table has "
                       f"{len(self.tokens)} prompt(s), layers {self.layers}, positions {self.positions(prompt)}")

    def grid(self, measure: str, prompt: int = 0) -> np.ndarray:
        """(layers, positions) float array of ``target_prob``, ``target_rank``, ``kl`` or ``top_prob``
        for one prompt, in :attr:`layers` x :meth:`positions` order (NaN where undefined)."""
        if measure not in ("target_prob", "target_rank", "kl", "top_prob"):
            raise ValueError(f"unknown measure {measure!r}; valid: target_prob, target_rank, kl, top_prob")
        layers, pos = self.layers, self.positions(prompt)
        out = np.full((len(layers), len(pos)), np.nan)
        li, pi = {x: i for i, x in enumerate(layers)}, {x: i for i, x in enumerate(pos)}
        for r in self.rows:
            if r.prompt == prompt:
                v = r.top_probs[0] if measure == "top_prob" else getattr(r, measure)
                out[li[r.layer], pi[r.position]] = np.nan if v is None else float(v)
        return out

    # -- writing -----------------------------------------------------------------------------
    def to_csv(self, path: str | Path | None = None) -> str:
        """One line per cell; the top tokens joined by ``|`` (their probabilities likewise)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*_FLAT, "top_tokens", "top_ids", "top_probs"])
        for r in self.rows:
            w.writerow([*("" if (v := getattr(r, k)) is None else v for k in _FLAT), "|".join(r.top_tokens),
                        "|".join(map(str, r.top_ids)), "|".join(f"{p:.6g}" for p in r.top_probs)])
        return _write(buf.getvalue(), path)

    def to_json(self, path: str | Path | None = None) -> str:
        """Lens, stage, tokens, info and rows as JSON."""
        doc = {"lens": self.lens, "stage": self.stage, "tokens": [list(t) for t in self.tokens],
               "info": dict(self.info), "rows": [dataclasses.asdict(r) for r in self.rows]}
        return _write(json.dumps(doc, indent=1) + "\n", path)

    @classmethod
    def from_json(cls, path: str | Path) -> LensTable:
        """Read what :meth:`to_json` wrote.

        Raises:
            ValueError: not a lens table.
        """
        doc: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not {"lens", "rows", "tokens"} <= set(doc):
            raise ValueError(f"{path} is not a lens table (no 'lens', 'rows' and 'tokens')")
        fields: list[dict[str, Any]] = [{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}
                                        for r in doc["rows"]]
        rows = tuple(LensRow(**f) for f in fields)
        return cls(rows, doc["lens"], doc.get("stage", "output"), tuple(tuple(t) for t in doc["tokens"]),
                   dict(doc.get("info", {})))

    def to_text(self, *, width: int = 10) -> str:
        """Per prompt, a layers x positions grid of each cell's top token (with the target's
        probability when there is a target)."""
        def fit(s: str) -> str:
            s = repr(s)[1:-1] if s.strip() else repr(s)  # a blank token shows as ' '
            return s if len(s) <= width else s[: width - 1] + "~"

        out = [f"{self.lens} lens ({self.stage} of each layer)"]
        for p, toks in enumerate(self.tokens):
            pos = self.positions(p)
            target = next((r.target for r in self.rows if r.prompt == p and r.target is not None), None)
            cols = [f"{i}:{fit(toks[i])}" for i in pos]
            w = max(width, *(len(c) for c in cols)) + (7 if target is not None else 0)
            out.append(f"\nprompt {p}" + (f" - target {target!r}: p(target) after each top token" if target else ""))
            out.append("layer " + " ".join(f"{c:>{w}}" for c in cols))
            for layer in self.layers:
                cells = []
                for i in pos:
                    r = self.cell(p, layer, i)
                    s = fit(r.top_tokens[0])
                    cells.append(f"{s} {r.target_prob:.3f}" if r.target_prob is not None else s)
                out.append(f"{layer:>5} " + " ".join(f"{c:>{w}}" for c in cells))
        return "\n".join(out)

    def plot(self, *, prompt: int = 0, path: str | Path | None = None) -> Figure:
        """The heatmap of one prompt (see :func:`lens_heatmap`)."""
        return lens_heatmap(self, prompt=prompt, path=path)


def _write(text: str, path: str | Path | None) -> str:
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


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
