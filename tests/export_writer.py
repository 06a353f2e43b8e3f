"""Starts an export and stops in the middle of writing it, for a test to ``kill -9``: the backend's
folder is written into the working folder, then READY is created and the process sleeps.

    python export_writer.py mlx|torch MODEL_DIR OUT_DIR READY
"""

import sys
import time
from pathlib import Path

import numpy as np

import mlx_steer as ms
from mlx_steer.engine import interventions as iv


def main() -> None:
    backend, model_dir, out, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    m = ms.load(model_dir, backend=backend)
    real = type(m.backend).write_model

    def write_then_hang(self, folder, baked, *, dtype):
        real(self, folder, baked, dtype=dtype)
        ready.write_text(str(folder))
        time.sleep(600)

    type(m.backend).write_model = write_then_hang
    vector = np.random.default_rng(2).normal(size=m.hidden_size).astype(np.float32)
    m.export(out, {"layers.1": iv.add_vector(vector, scale=3.0)})


if __name__ == "__main__":
    main()
