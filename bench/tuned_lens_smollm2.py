"""Tuned lens vs logit lens on SmolLM2-135M-Instruct: held-out KL per layer (the figures in docs/lens.md).

    python bench/tuned_lens_smollm2.py [--backend torch|mlx] [--steps 12] [--lr 1e-3] [--optimizer sgd|adam] [-o DIR]

Prompts: the first 8 words of each question in the bundled CAA refusal, corrigibility and
survival-instinct files (short, varied text); 200 train and 24 held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[1] / "mlx_steer" / "evaluate" / "datasets" / "caa"


def prompts() -> list[str]:
    out = []
    for name in ("refusal", "corrigible-neutral-HHH", "survival-instinct"):
        for line in (DATA / f"{name}.jsonl").read_text().splitlines():
            words = json.loads(line)["question"].split("\n")[0].split()
            if len(words) >= 4:
                out.append(" ".join(words[:8]))
    return list(dict.fromkeys(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--batch-tokens", type=int, default=64)
    ap.add_argument("-o", "--out", default=None)
    ap.add_argument("--cache", default=None, help="npz of the recorded residuals and logit-lens KL (reused if present)")
    args = ap.parse_args()
    import numpy as np

    import mlx_steer as ms
    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.lens.training import fit_translators, lens_kl, record_residuals

    path = str(prepare_smollm2(verbose=False))
    if args.backend == "torch":
        from mlx_steer.torch_backend import load

        model = load(path)
    else:
        model = ms.load(path)
    ps = prompts()
    rng = np.random.default_rng(0)
    ps = [ps[i] for i in rng.permutation(len(ps))[:224]]
    t = time.perf_counter()
    if args.cache and Path(args.cache).exists():
        cached = np.load(args.cache)
        test, train, logit = cached["test"], cached["train"], cached["logit"]
    else:
        test, train = record_residuals(model, ps[:24]), record_residuals(model, ps[24:])
        print(f"recorded {train.shape[0]} train / {test.shape[0]} held-out tokens in {time.perf_counter() - t:.0f} s",
              flush=True)
        t = time.perf_counter()
        logit = lens_kl(model, test)
        print(f"logit-lens KL in {time.perf_counter() - t:.0f} s", flush=True)
        if args.cache:
            np.savez(args.cache, test=test, train=train, logit=logit)
    t = time.perf_counter()
    lens = fit_translators(model, train, steps=args.steps, lr=args.lr, batch_tokens=args.batch_tokens,
                          optimizer=args.optimizer)
    train_s = time.perf_counter() - t
    tuned = lens_kl(model, test, lens)
    print(f"training: {args.steps} {args.optimizer} steps of {args.batch_tokens} tokens, lr {args.lr}, {train_s:.0f} s "
          f"({args.backend})")
    print("| layer | logit lens KL | tuned lens KL |\n|---:|---:|---:|")
    for i, (a, b) in enumerate(zip(logit, tuned)):
        print(f"| {i} | {a:.3f} | {b:.3f} |")
    print(f"every layer lower: {bool(np.all(tuned < logit))}")
    if args.out:
        lens.save(args.out)


if __name__ == "__main__":
    main()
