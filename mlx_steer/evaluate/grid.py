"""The cells an evaluation scores: (vector, layer, strength), with the random and sign-flipped controls.

A cell steers one layer with one direction at one strength. The ``steering`` direction is the user's
vector at that layer; the ``random`` control is a seeded Gaussian direction of the same norm (a fresh
one per layer, the same for a seed); the ``flipped`` control is the vector negated. Strength 0 is the
unsteered model, the same cell for every layer and vector: it is computed once.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..analysis.vector_inputs import layer_direction
from ..engine import interventions as iv

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["CONTROLS", "Cell", "Grid"]

CONTROLS = ("random", "flipped")
VECTORS = ("steering", *CONTROLS)


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: which vector, at which layer, how strong."""

    vector: str
    layer: int | str
    strength: float


class Grid:
    """The evaluation grid over ``layers`` x ``strengths`` for the steering vector and ``controls``.

    Args:
        model: The steerable model (either backend).
        vector: A SteeringVector with a direction at each layer (or one, used at every layer) or a
            raw (D,) array (added at the layers' outputs); a direction may be ActAdd's front-aligned
            (n, D) tensor, added at positions 0..n-1 whatever ``positions`` says.
        layers: Layer indices (or site paths).
        strengths: Multipliers of the vector (finite; 0 is the unsteered model).
        controls: Any of ``"random"`` and ``"flipped"``.
        positions: Which positions each cell steers.
        seed: Seeds the random control.

    Raises:
        ValueError: no layers or strengths, a non-finite strength, a repeated layer or strength, an
            unknown control, or a layer the vector has no direction at.
    """

    def __init__(self, model: Steerable, *, vector: object, layers: Sequence[int | str],
                 strengths: Sequence[float], controls: Sequence[str] = (), positions: object = "all", seed: int = 0):
        self.layers, self.strengths = list(layers), [_strength(s) for s in strengths]
        if not self.layers or not self.strengths:
            raise ValueError("an evaluation needs at least one layer and one strength")
        for name, values in (("layers", self.layers), ("strengths", self.strengths)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeat a value: {values}")
        unknown = [c for c in controls if c not in CONTROLS]
        if unknown or isinstance(controls, str):
            raise ValueError(f"unknown control(s) {unknown or controls!r}; valid: {', '.join(CONTROLS)}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.vectors = ["steering", *[c for c in CONTROLS if c in controls]]
        self.model, self.positions, self.seed = model, positions, int(seed)
        self.sites: dict[int | str, tuple[str, np.ndarray]] = {}
        for layer in self.layers:
            self.sites[layer] = layer_direction(model, vector, layer, ndim=(1, 2))
        iv.add_vector(np.zeros(model.hidden_size, np.float32), positions=positions)  # checks the positions

    @property
    def cells(self) -> list[Cell]:
        """Every cell, vector-major, then layer, then strength (the table's order)."""
        return [Cell(v, layer, s) for v in self.vectors for layer in self.layers for s in self.strengths]

    def direction(self, vector: str, layer: int | str) -> np.ndarray:
        """The (D,) direction ``vector`` adds at ``layer``."""
        d = self.sites[layer][1].astype(np.float32)
        if vector == "steering":
            return d
        if vector == "flipped":
            return -d
        key = zlib.crc32(str(layer).encode())  # a fresh random direction per layer, fixed by the seed
        g = np.random.default_rng([self.seed, key]).standard_normal(d.shape)
        norms = np.linalg.norm(g, axis=-1, keepdims=True)  # each position's norm kept (a (n, D) tensor's too)
        return (g / norms * np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)

    def interventions(self, cell: Cell) -> dict | None:
        """``{site: add_vector}`` steering ``cell`` (None for strength 0, the unsteered model)."""
        if cell.strength == 0.0:
            return None
        site, d = self.sites[cell.layer]
        # a front-aligned (n, D) tensor (ActAdd) sets its own positions 0..n-1
        return {site: iv.add_vector(self.direction(cell.vector, cell.layer), scale=cell.strength,
                                    positions=self.positions if d.ndim == 1 else "all")}

    def distinct(self) -> dict[tuple, Cell]:
        """One cell per distinct :meth:`key`, the unsteered model always first (the reference)."""
        out: dict[tuple, Cell] = {("unsteered",): Cell("steering", self.layers[0], 0.0)}
        for cell in self.cells:
            out.setdefault(self.key(cell), cell)
        return out

    def key(self, cell: Cell) -> tuple:
        """Cells with the same key add the same thing: strength 0 everywhere is one cell, and the
        flipped vector at ``s`` is the vector at ``-s`` (``-v * s == v * -s`` in floating point)."""
        if cell.strength == 0.0:
            return ("unsteered",)
        if cell.vector == "flipped":
            return ("steering", cell.layer, -cell.strength)
        return (cell.vector, cell.layer, cell.strength)


def _strength(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(float(value)):
        raise ValueError(f"strengths must be finite numbers, got {value!r}")
    return float(value)
