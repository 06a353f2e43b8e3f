"""A layer x strength sweep: the behaviour steering buys against the fluency it costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from tqdm import tqdm

from ..engine import interventions as iv
from ..engine.positions import as_positions
from .vector_inputs import batches, layer_direction, prompt_list, unit_direction
from .cell_scoring import CellScorer, steered_layer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..distributed.group import Group
    from ..engine.paths import Site
    from ..engine.model import Steerable

METRICS = ("logit_diff", "projection")


class SweepRow(NamedTuple):
    """One (layer, strength) cell of :func:`sweep`."""

    layer: int | str
    strength: float
    behaviour: float
    kl: float


@dataclass(frozen=True)
class SweepResult:
    """Rows ``(layer, strength, behaviour, kl)`` of :func:`sweep`, layer-major.

    Attributes:
        table: The rows, layer-major.
        baseline: Behaviour of the unsteered model.
        metric: ``logit_diff`` or ``projection``.
        layers: The layers swept, in order.
        strengths: The strengths swept, in order.
    """

    table: tuple[SweepRow, ...]
    baseline: float
    metric: str
    layers: tuple
    strengths: tuple[float, ...]

    def grid(self, value: str = "behaviour") -> np.ndarray:
        """(layers, strengths) array of ``behaviour`` or ``kl``."""
        if value not in ("behaviour", "kl"):
            raise ValueError(f"value must be 'behaviour' or 'kl', got {value!r}")
        flat = np.array([getattr(r, value) for r in self.table], dtype=np.float64)
        return flat.reshape(len(self.layers), len(self.strengths))

    def to_text(self) -> str:
        """The table, aligned, under the baseline."""
        head = ("layer", "strength", self.metric, "kl")
        rows = [(str(r.layer), f"{r.strength:g}", f"{r.behaviour:.4f}", f"{r.kl:.4f}") for r in self.table]
        w = [max(len(x) for x in col) for col in zip(head, *rows)]

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(n) for c, n in zip(cells, w))

        return "\n".join([f"baseline {self.metric}: {self.baseline:.4f}", fmt(head)] + [fmt(r) for r in rows])

    def figure(self) -> Figure:
        """Behaviour and KL heatmaps (layers x strengths), each cell labelled with its value.

        Raises:
            ImportError: matplotlib is missing (``pip install "mlx-steer[plot]"``).
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError('SweepResult heatmaps need matplotlib: pip install "mlx-steer[plot]"') from exc
        fig = Figure(figsize=(4 + 1.2 * len(self.strengths), 1.5 + 0.5 * len(self.layers)), layout="constrained")
        for ax, value, title in zip(fig.subplots(1, 2), ("behaviour", "kl"), (self.metric, "KL(base || steered)")):
            grid = self.grid(value)
            im = ax.imshow(grid, aspect="auto", cmap="viridis")
            finite = grid[np.isfinite(grid)]
            middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
            for (i, j), x in np.ndenumerate(grid):  # dark text on viridis' light (high) end
                ax.text(j, i, f"{x:.3g}", ha="center", va="center", fontsize=8,
                        color="black" if x > middle else "white")
            ax.set_xticks(range(len(self.strengths)), [f"{s:g}" for s in self.strengths])
            ax.set_yticks(range(len(self.layers)), [str(layer) for layer in self.layers])
            ax.set_xlabel("strength")
            ax.set_ylabel("layer")
            ax.set_title(title)
            fig.colorbar(im, ax=ax)
        return fig

    def heatmap(self, path: str | Path) -> Path:
        """Write :meth:`figure` (behaviour and KL heatmaps, values in the cells) to a PNG.

        Raises:
            ImportError: matplotlib is missing (``pip install "mlx-steer[plot]"``).
        """
        fig = self.figure()
        path = Path(path)
        fig.savefig(path, format="png")
        return path


def sweep(
    model: Steerable,
    *,
    vector: object,
    layers: Sequence[int | str],
    strengths: Sequence[float],
    prompts: str | Sequence[str],
    metric: str = "logit_diff",
    target_tokens: object = None,
    contrast_tokens: object = None,
    direction: object = None,
    read_site: str | Site = "layers.-1",
    positions: object = "all",
    batch_size: int = 32,
    chat: bool = False,
    progress: bool = True,
    group: Group | None = None,
    share_layers: bool = True,
    shared_prefix: bool = True,
) -> SweepResult:
    """Steer one layer at a time at each strength; measure behaviour and fluency cost.

    Behaviour, averaged over prompts, at each prompt's last token: ``logit_diff`` = mean logit of
    ``target_tokens`` minus mean logit of ``contrast_tokens``; ``projection`` = ``read_site``'s
    activation projected on the unit ``direction``. Fluency cost = KL(unsteered || steered) of
    the next-token distributions, averaged over every real position of every prompt. The
    unsteered pass runs once and is reused; strength 0 is the unsteered pass. Cells are batched:
    one forward carries the prompts once per cell, each copy steered by its own (layer,
    strength) — the same numbers as one cell at a time, in fewer, larger forwards.

    Args:
        model: A steerable model of either backend.
        vector: A SteeringVector with a direction at each layer (or a single direction, used at
            every layer), or a raw (D,) array (added at layer outputs).
        layers: Layer indices (or site paths) to steer, one at a time.
        strengths: Scales of the vector.
        prompts: Neutral text, in left-padded batches.
        batch_size: Rows per forward: prompts per batch, and as many cells side by side as fit
            (``batch_size // prompts per batch``; at least one).
        metric: ``logit_diff`` or ``projection``.
        target_tokens: Token strings (one token each) or ids whose logits ``logit_diff`` raises.
        contrast_tokens: Token strings or ids subtracted in ``logit_diff``.
        direction: (D,) array (or SteeringVector) read at ``read_site``, for ``projection``.
        read_site: Where ``projection`` reads.
        positions: Which positions to steer (default all).
        chat: Wrap each prompt as a chat user turn.
        progress: Show a progress bar over the (layer, strength) cells (on stderr; over several
            ranks, on rank 0 only).
        group: Ranks to share the cells with (see :mod:`mlx_steer.distributed`); default: the
            group this process was launched into (``mlx.launch``/``torchrun``), if any. Each rank
            scores its share of the cells against its own unsteered pass, and the ranks add the
            (cells × 2) table of scores; every rank returns the whole result.
        share_layers: Keep, from the unsteered pass, the input of each steered layer and start
            the steered forwards there (``run(from_layer=...)``): the unsteered layers below run
            once, not once per cell. The same numbers (checked on one prompt first; a model where
            a forward that skips layers differs runs whole); False runs every forward whole.
        shared_prefix: With ``positions="last"``, run each batch's prompts but their last token once
            with a KV cache and every cell's last token from it (KL is 0 before the last position,
            where no cell steers); False runs each cell's prompts whole.

    Returns:
        A :class:`SweepResult`.

    Raises:
        ValueError: unknown metric, missing tokens or direction, a layer the vector lacks.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    layers, strengths = list(layers), [float(s) for s in strengths]
    if not layers or not strengths:
        raise ValueError("need at least one layer and one strength")
    if not all(np.isfinite(strengths)):
        raise ValueError(f"strengths must be finite, got {strengths}")
    steer_at = {layer: layer_direction(model, vector, layer) for layer in layers}
    read_key, unit, target, contrast = None, None, None, None
    if metric == "logit_diff":
        if target_tokens is None or contrast_tokens is None:
            raise ValueError("metric 'logit_diff' needs target_tokens and contrast_tokens")
        target = _token_ids(model, target_tokens, "target_tokens")
        contrast = _token_ids(model, contrast_tokens, "contrast_tokens")
    else:
        if direction is None:
            raise ValueError("metric 'projection' needs direction=")
        read_key, unit = unit_direction(model, read_site, direction)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    chunks = batches([model.encode(p, chat=chat) for p in prompt_list(prompts)], batch_size)
    cells = [(layer, s) for layer in layers for s in strengths]
    steered = [(layer, s) for layer, s in cells if s != 0.0]
    specs: list[dict | None] = [{steer_at[layer][0]: iv.add_vector(steer_at[layer][1], scale=s, positions=positions)}
             for layer, s in steered]
    at = [steered_layer(model, spec) for spec in specs]
    measure = CellScorer(model, chunks, read_key, unit, target, contrast, rows_per_forward=batch_size,
                         steered_layers=at, share_layers=share_layers,
                         shared_prefix=shared_prefix and as_positions(positions).kind == "last")
    base_behaviour = measure.baseline()
    if group is None:
        from ..distributed.group import launched_group

        group = launched_group(model)
    shown = progress and (group is None or group.rank == 0)
    with tqdm(total=len(cells), desc="sweep", unit="cell", disable=not shown) as bar:
        bar.update(len(cells) - len(steered))  # strength 0 is the unsteered pass
        scores = dict(zip(steered, _shared_cells(measure, specs, at, group, bar.update)))
    rows = [SweepRow(layer, s, *scores.get((layer, s), (base_behaviour, 0.0))) for layer, s in cells]
    return SweepResult(tuple(rows), base_behaviour, metric, tuple(layers), tuple(strengths))


def _shared_cells(measure: CellScorer, specs: list[dict | None], layers: list[int | None], group: Group | None,
                  progress: Any) -> list[tuple[float, float]]:
    """``measure.cells(specs)``, the cells dealt round-robin over ``group``'s ranks and the scores
    all-reduced, after the ranks agree that none failed (so all raise together)."""
    if group is None or group.size == 1:
        return measure.cells(specs, progress=progress, layers=layers)
    from ..distributed.data_parallel import together

    mine = list(range(group.rank, len(specs), group.size))
    local = together(group, lambda: measure.cells([specs[i] for i in mine], progress=lambda n: progress(n * group.size),
                                                  layers=[layers[i] for i in mine]), what="the sweep")
    table = np.zeros((len(specs), 2))
    table[mine] = np.array(local, dtype=np.float64).reshape(-1, 2)
    return [(float(b), float(k)) for b, k in group.all_sum(table)]


def _token_ids(model: Steerable, tokens: Any, what: str) -> list[int]:
    """Ids from ints or strings (each string must be exactly one token)."""
    items = [tokens] if isinstance(tokens, (str, int, np.integer)) else list(tokens or [])
    if not items:
        raise ValueError(f"{what} is empty; give token strings or ids")
    ids = []
    for t in items:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            ids.append(int(t))
            continue
        enc = list(model.tokenizer.encode(t, add_special_tokens=False))
        if len(enc) != 1:
            raise ValueError(f"{what}: {t!r} is {len(enc)} tokens {enc}; give single tokens or ids")
        ids.append(int(enc[0]))
    return ids
