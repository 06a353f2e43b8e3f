"""Patching speed on SmolLM2: a residual-stream activation-patching sweep of all 30 layers x 12 positions
with its cells batched as rows (each row its own ``set``) vs one cell per forward, and attribution
patching of the same grid vs one forward of the corrupted prompt; plus the attribution-vs-activation
correlation on the pair (reported, not asserted).

    python bench/patching.py [--repeats 3] [--backends mlx torch] [--json out.json]

Targets (issue 27): the batched sweep takes <= 1/5 of one cell per forward (ratio >= 5); attribution
patching costs <= 4 forwards (ratio forward / attribution >= 0.25).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from table import markdown, speedup_rows  # noqa: E402

# 12 tokens each in SmolLM2's tokenizer
CLEAN = "The famous Eiffel Tower is located in the old city of"
CORRUPTED = "The famous Colosseum is located in the old city of"
TARGET, FOIL = " Paris", " Rome"


def _median(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def one_cell_per_forward(model) -> np.ndarray:
    """The naive sweep: a whole forward of the corrupted prompt per cell, with that cell's ``set``."""
    from mlx_steer.engine.gradients import logit_diff
    from mlx_steer.patching.activation import cell_interventions
    from mlx_steer.patching.pair import metric_rows, single_token
    from mlx_steer.patching.sweep import prepare

    metric = logit_diff(single_token(model, TARGET, "target"), single_token(model, FOIL, "foil"))
    sweep = prepare(model, CLEAN, CORRUPTED, metric, sites="resid", positions="each", aligned=None, chat=False)
    return np.array([metric_rows(model, metric, model.run([sweep.pair.corrupted],
                                                          interventions=cell_interventions(sweep, c)).logits, 1)[0]
                     for c in sweep.cells])


def bench(model, label: str, repeats: int) -> list[dict]:
    """Rows in bench/run.py's format."""
    from mlx_steer.patching import patch

    kw = dict(target=TARGET, foil=FOIL, sites="resid")
    n = len(model.encode(CORRUPTED))
    assert n == len(model.encode(CLEAN)) == 12, "the pair must be 12 tokens each"
    model.run([CORRUPTED])  # warm-up
    cells = f"{model.num_layers} layers x {n} positions"
    one, a = _median(lambda: one_cell_per_forward(model), repeats)
    batched, b = _median(lambda: patch(model, CLEAN, CORRUPTED, method="activation", batch_size=64, **kw), repeats)
    assert np.allclose(a, b.grid("activation", "metric").ravel(), atol=1e-3), "the same cells, the same numbers"
    rows = speedup_rows(f"residual-stream activation patching, {cells}, SmolLM2 ({label})",
                        {"one cell per forward, whole forwards": one,
                         "batched (patch): cells tiled by position and layer band, each forward continuing a shared "
                         "prefix of the corrupted prompt from its lowest patched layer": batched}, 5.0)
    forward, _ = _median(lambda: model.run([CORRUPTED]), max(repeats, 5))
    attribution, c = _median(lambda: patch(model, CLEAN, CORRUPTED, method="attribution", **kw), repeats)
    rows += speedup_rows(f"attribution patching, {cells}, SmolLM2 ({label})",
                         {"one forward of the corrupted prompt": forward,
                          "attribution patching (clean forward + forward and backward)": attribution}, 0.25)
    both = patch(model, CLEAN, CORRUPTED, method="both", **kw)
    rows[-1]["note"] = f"Pearson r with activation patching {both.correlation:.3f} over {len(b.rows)} cells"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--backends", nargs="+", choices=["torch", "mlx"], default=["mlx"])
    args = ap.parse_args()
    import mlx_steer as ms
    from mlx_steer.demo.real_model import prepare_smollm2

    path = str(prepare_smollm2(verbose=False))
    rows = []
    if "mlx" in args.backends:
        rows += bench(ms.load(path), "MLX", args.repeats)
    if "torch" in args.backends:
        from mlx_steer.torch_backend import load as torch_load

        rows += bench(torch_load(path), "torch CPU, fp32", args.repeats)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
