"""Activation Addition (Turner et al. 2023, "Steering Language Models Without Optimization").

    python examples/actadd.py [--model PATH] [--quick]

ActAdd adds the difference of a contrast pair's activations ("Love" - "Hate") to the residual
stream entering a block (``layers.N:input``) at every position, then samples as usual. Here:

1. an averaged, unit-norm Love - Hate vector from several contrast pairs, read at the last token;
2. seeded sampling (temperature, top-p, repetition penalty) with and without it;
3. the layers x coefficients grid: effect on a love-vs-hate logit margin and the KL cost;
4. the paper's own variant: one pair, front-aligned, position i of "Love" minus position i of "Hate"
   added at position i of the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import mlx_steer as ms
from mlx_steer import analysis
from mlx_steer.demo.examples import example_args, example_model_path

# Multi-token prompts: SmolLM2 adds no BOS, so a one-token prompt's last token is position 0, whose
# residual stream is the attention sink (norm ~700 against ~100 elsewhere) and says little.
PAIRS = [("I love you", "I hate you"), ("I feel love", "I feel hate"), ("Full of joy", "Full of anger"),
         ("Such kindness", "Such cruelty")]
FRONT_PAIR = ("Love", "Hate")  # the paper's single pair
PROMPT = "I hate you because"
NEUTRAL = ["I went up to my friend and said", "The weather today makes me feel"]
TARGET = [" love", " happy", " wonderful"]
CONTRAST = [" hate", " angry", " terrible"]
STEER_LAYER = 6  # ActAdd's layer for GPT-2 XL; SmolLM2 has 30 blocks of width 576
SAMPLING = {"temp": 0.7, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 0}


@dataclass(frozen=True)
class Settings:
    n_pairs: int
    layers: tuple[int, ...]  # grid rows (the steering layer must be one of them)
    coefficients: tuple[float, ...]  # grid columns, for the unit vector
    n_neutral: int
    coefficient: float  # for sampling with the unit vector
    front_coefficient: float  # for the front-aligned single-pair tensor
    gen_tokens: int


NORMAL = Settings(4, (2, 6, 10), (0.0, 20.0, 40.0, 80.0), 2, 40.0, 5.0, 24)
QUICK = Settings(2, (6,), (0.0, 40.0), 1, 40.0, 5.0, 3)


def show(label: str, text: str) -> None:
    print(f"  [{label:>22}] {PROMPT}{'' if text[:1].isspace() else ' '}{text.strip()!r}")


def main(argv: list[str] | None = None) -> dict:
    """Run the ActAdd walkthrough; returns its vectors, grid and texts (for tests)."""
    args = example_args(argv, __doc__)
    cfg = QUICK if args.quick else NORMAL
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    site = f"layers.{STEER_LAYER}:input"

    pos, neg = zip(*PAIRS[: cfg.n_pairs])
    print(f"1. Love - Hate at the input of blocks {list(cfg.layers)}, averaged over {cfg.n_pairs} pairs, unit norm")
    raw = ms.extract(model, list(pos), list(neg), sites=[f"layers.{i}:input" for i in cfg.layers], read="last")
    unit = raw.normalized()
    print("   raw norms: " + ", ".join(f"{p.rsplit('.', 1)[-1]}: {n:.1f}" for p, n in raw.norms().items()))

    print(f"\n2. sampling {SAMPLING}, {cfg.gen_tokens} tokens; unit vector x {cfg.coefficient:g} at {site}, all positions")
    at_layer = unit.select([model.resolve_path(f"layers.{STEER_LAYER}")])
    plain = model.generate(PROMPT, max_tokens=cfg.gen_tokens, **SAMPLING)
    steered = model.generate(PROMPT, max_tokens=cfg.gen_tokens, interventions=at_layer.to_interventions(scale=cfg.coefficient), **SAMPLING)
    show("unsteered", plain)
    show(f"+{cfg.coefficient:g} x (Love - Hate)", steered)

    print(f"\n3. grid: logit margin mean{TARGET} - mean{CONTRAST} at the last token, and KL(unsteered || steered)")
    neutral = NEUTRAL[: cfg.n_neutral]
    grid = analysis.sweep(model, vector=unit, layers=list(cfg.layers), strengths=list(cfg.coefficients),
                          prompts=neutral, target_tokens=TARGET, contrast_tokens=CONTRAST)
    print("   " + grid.to_text().replace("\n", "\n   "))

    print(f"\n4. front-aligned single pair ({FRONT_PAIR[0]!r} - {FRONT_PAIR[1]!r}) x {cfg.front_coefficient:g} at {site}")
    front = ms.extract(model, [FRONT_PAIR[0]], [FRONT_PAIR[1]], sites=site, method="actadd")
    tensor = front[model.resolve_path(f"layers.{STEER_LAYER}")]
    norms = ", ".join(f"{n:.1f}" for n in np.linalg.norm(tensor, axis=1))
    print(f"   tensor {tensor.shape} (added at positions 0..{len(tensor) - 1}), row norms {norms}")
    front_text = model.generate(PROMPT, max_tokens=cfg.gen_tokens, interventions=front.to_interventions(scale=cfg.front_coefficient), **SAMPLING)
    show("unsteered", plain)
    show(f"+{cfg.front_coefficient:g} x front-aligned", front_text)
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return {
        "model": model, "site": site, "raw": raw, "unit": unit, "plain": plain, "steered": steered,
        "coefficient": cfg.coefficient, "grid": grid, "neutral": neutral, "front": front,
        "front_coefficient": cfg.front_coefficient, "front_text": front_text, "gen_tokens": cfg.gen_tokens,
    }


if __name__ == "__main__":
    main()
