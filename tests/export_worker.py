"""Loads exported model folders with the plain framework only (no mlx_steer in this process) and
saves each one's logits for a prompt and its 32 greedy tokens: the other side of the export oracle.

    python export_worker.py mlx|torch JOBS.json OUT.npz
JOBS: [[folder, [token ids]], ...]
"""

import ctypes
import json
import os
import sys

import numpy as np


def _openblas() -> None:
    """The BLAS mlx_steer gives MLX on Linux, loaded the same way (before mlx), so both sides round alike."""
    for flavour in ("pthread", "openmp", "serial"):
        path = f"/usr/lib/x86_64-linux-gnu/openblas-{flavour}/libopenblas.so.0"
        if os.path.exists(path):
            ctypes.CDLL(path, mode=os.RTLD_GLOBAL | os.RTLD_NOW)
            return


def run_mlx(folder: str, tokens: list[int]) -> tuple[np.ndarray, list[int]]:
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(folder)
    logits = np.array(model(mx.array([tokens]))[0].astype(mx.float32))
    seq = list(tokens)
    for _ in range(32):  # greedy, recomputed from scratch each step: no cache in the comparison
        seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
    return logits, seq[len(tokens):]


def run_torch(folder: str, tokens: list[int]) -> tuple[np.ndarray, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
        seq = list(tokens)
        for _ in range(32):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return logits, seq[len(tokens):]


def main() -> None:
    backend, jobs, out = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
    if backend == "mlx":
        _openblas()
    run = run_mlx if backend == "mlx" else run_torch
    saved = {}
    for i, (folder, tokens) in enumerate(jobs):
        logits, greedy = run(folder, tokens)
        saved[f"{i}/logits"], saved[f"{i}/greedy"] = logits, np.array(greedy)
    assert not [m for m in sys.modules if m.split(".")[0] == "mlx_steer"], "mlx_steer was imported"
    np.savez(out, **saved)


if __name__ == "__main__":
    main()
