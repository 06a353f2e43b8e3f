"""Calibration on SmolLM2-135M-Instruct, both backends: the coefficient at a 0.5-nat mean KL budget for a
seeded Gaussian direction at layer 12, and that coefficient's KL re-measured independently (solo greedy
rollouts, solo full-logit forwards, a numpy log-softmax): the figures in docs/calibration.md.

    python bench/calibration_smollm2.py [--target-kl 0.5] [--layer 12]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def solo_kl(model, site, direction, scale, prompts, tokens) -> float:
    """Mean per-token KL(unsteered || steered) from solo runs, as the tests' oracle computes it."""
    import numpy as np

    from mlx_steer.engine import interventions as iv

    def log_softmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    out = []
    for prompt in prompts:
        ids = model.encode(prompt, chat=True)
        seq = ids + model.generate_tokens(ids, max_tokens=tokens)
        p = log_softmax(model.to_numpy(model.run([seq]).logits)[0])
        q = log_softmax(model.to_numpy(model.run([seq], interventions={site: iv.add_vector(direction, scale=scale)}).logits)[0])
        out.append((np.exp(p) * (p - q)).sum(-1)[len(ids) - 1:])
    return float(np.mean(np.concatenate(out)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-kl", type=float, default=0.5)
    ap.add_argument("--layer", type=int, default=12)
    args = ap.parse_args()

    import numpy as np

    import mlx_steer as ms
    from mlx_steer.analysis import NEUTRAL_PROMPTS, calibrate
    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.torch_backend import load as load_torch

    folder = prepare_smollm2(verbose=False)
    for name, model in (("mlx", ms.load(str(folder))), ("torch", load_torch(str(folder)))):
        site = model.resolve_path(f"layers.{args.layer}")
        vec = ms.SteeringVector({site: np.random.default_rng(0).standard_normal(model.hidden_size)})
        t0 = time.perf_counter()
        cal = calibrate(model, vec, target_kl=args.target_kl).calibration
        seconds = time.perf_counter() - t0
        c = cal.coefficients[site]
        again = solo_kl(model, site, vec[site], c, NEUTRAL_PROMPTS, cal.rollout_tokens)
        print(f"{name}: coefficient {c:.6f}, stored KL {cal.achieved_kl[site]:.6f}, re-measured {again:.6f}, "
              f"{seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
