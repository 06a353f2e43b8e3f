"""What collects attention patterns forward by forward and lays them out by absolute position.

A backend hands each asked layer's (B, H, L_q, L_k) weights to :meth:`PatternRecording.add` while
its attention runs; the recording notes the forward's absolute positions and row keys (from the
model's position tracker) with it. In every forward the last key column is the newest token of
its row, so key column ``c`` holds absolute position ``pos[b, -1] - (L_k - 1) + c``: this is what
puts a left-padded prompt, a chunked prefill and each decode step's single row into one
(rows, H, N, N) array per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine.arrays import Array, ArrayOps
from ..engine.positions import PositionState


@dataclass(frozen=True)
class AttentionPatterns:
    """Attention weights per layer, by absolute position.

    ``by_layer[i]`` is (rows, H, N, N) float32: ``[r, h, q, k]`` is how much head ``h`` of row ``r``'s
    token at absolute position ``q`` (0 = the row's first real token) attends to position ``k``.
    ``lengths[r]`` positions of row ``r`` were run (``q < lengths[r]``); the rest is zero, as are
    padding and future keys. Each run row sums to 1 over its keys.
    """

    by_layer: dict[int, np.ndarray]
    lengths: tuple[int, ...]

    def __getitem__(self, layer: int) -> np.ndarray:
        if layer not in self.by_layer:
            raise KeyError(f"layer {layer} was not recorded; recorded: {sorted(self.by_layer)}")
        return self.by_layer[layer]

    @property
    def layers(self) -> list[int]:
        return sorted(self.by_layer)

    def row(self, r: int, layer: int) -> np.ndarray:
        """Row ``r``'s pattern at ``layer`` over its own positions: (H, n, n), n = ``lengths[r]``."""
        n = self.lengths[r]
        return self[layer][r, :, :n, :n]


@dataclass
class PatternRecording:
    """Collects patterns of ``layers`` over every forward until the recording ends; read them
    with :meth:`result`."""

    state: PositionState
    xp: ArrayOps
    layers: list[int]
    pieces: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, Array]]] = field(default_factory=dict)

    def add(self, layer: int, pattern: Array) -> None:
        """Keep ``pattern`` (B, H, L_q, L_k) of the forward now running at ``layer``.

        Raises:
            ValueError: the keys do not reach back to each row's first token (a KV cache that keeps
                only a window of recent tokens), so the pattern cannot cover the full context.
        """
        pos, rows = self.state.pos.copy(), self.state.rows.copy()
        B, _, qL, kL = pattern.shape
        if pos.shape != (B, qL):
            raise ValueError(f"a pattern for {B} rows x {qL} queries in a forward of positions {pos.shape}")
        first = pos[:, -1] - (kL - 1)  # absolute position of key column 0, per row
        if (first > 0).any():
            raise ValueError(
                f"layer {layer}'s keys cover only the last {kL} tokens (a rotating or sliding-window KV "
                "cache, e.g. max_kv_size): attention patterns need the whole context; use a full cache"
            )
        # padding is no position: left padding is negative; mlx-lm's batched prefill pads on the
        # right, past each row's prompt (a forward of several tokens runs no generated token)
        valid = pos >= 0
        if qL > 1:
            valid &= pos < self.state.prompt_len.reshape(-1, 1)
        self.pieces.setdefault(layer, []).append((pos, rows, valid, pattern))

    def result(self) -> AttentionPatterns:
        """The patterns so far, laid out by absolute position (see :class:`AttentionPatterns`)."""
        missing = [i for i in self.layers if i not in self.pieces]
        if missing:
            raise ValueError(f"no attention pattern was recorded at layers {missing} (of {self.layers}): no forward "
                             "ran inside the recording, or those layers' attention does not run the function "
                             "patterns are read from")
        every = [p for ps in self.pieces.values() for p in ps]
        R = int(max(rows.max() for _, rows, _, _ in every)) + 1
        ends = np.zeros(R, dtype=np.int64)
        for pos, rows, valid, _ in every:
            np.maximum.at(ends, rows, np.where(valid, pos + 1, 0).max(axis=1))
        N = int(ends.max())
        out = {}
        for layer, pieces in self.pieces.items():
            H = pieces[0][3].shape[1]
            a = np.zeros((R, H, N, N), dtype=np.float32)
            for pos, rows, valid, pattern in pieces:
                _place(a, pos, rows, valid, self.xp.to_numpy(pattern))
            out[layer] = a
        return AttentionPatterns(out, tuple(int(n) for n in ends))


def _place(out: np.ndarray, pos: np.ndarray, rows: np.ndarray, valid: np.ndarray, p: np.ndarray) -> None:
    """Write one forward's (B, H, L_q, L_k) weights of its valid queries at their rows' absolute
    positions (padding keys are masked: their weights are 0 and have no position to go to)."""
    kL = p.shape[-1]
    for b, r in enumerate(rows):
        keys = pos[b, -1] - (kL - 1) + np.arange(kL)
        q_ok, k_ok = valid[b], (keys >= 0) & (keys <= pos[b][valid[b]].max(initial=-1))
        out[r][:, pos[b][q_ok][:, None], keys[k_ok][None]] = p[b][:, q_ok][:, :, k_ok]
