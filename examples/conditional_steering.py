"""Conditional steering (CAST, Lee et al. 2024) on SmolLM2-135M-Instruct: steer only the requests about
one topic (cooking), leave every other request exactly as the model answers it.

    python examples/conditional_steering.py [--model PATH] [--quick]

1. The condition's direction: at each candidate layer, the mean difference of the prompt's mean
   activation (after the chat template) between cooking and other requests (``examples/data``).
2. ``find_threshold``: the layer and cosine threshold that best separate the training requests (F1),
   then its accuracy on held-out requests.
3. The behaviour: a unit Love - Hate vector (ActAdd's pairs) added on the generated tokens of the requests
   whose prompt passes the condition, in one batch with the others; each row reports its decision.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import mlx_steer as ms
from mlx_steer import analysis as an
from mlx_steer.demo.examples import example_args, example_model_path

DATA = Path(__file__).resolve().parent / "data" / "topic_prompts.json"
PAIRS = [("I love you", "I hate you"), ("I feel love", "I feel hate"), ("Full of joy", "Full of anger"),
         ("Such kindness", "Such cruelty")]


@dataclass(frozen=True)
class Settings:
    layers: tuple[int, ...]  # where the condition may read
    n_train: int
    n_test: int
    steer_layer: int
    scale: float
    max_tokens: int


NORMAL = Settings((4, 8, 12, 16, 20), 14, 12, 8, 8.0, 32)
QUICK = Settings((8, 12), 6, 4, 8, 8.0, 8)


def main(argv: list[str] | None = None) -> dict:
    """Run the walkthrough; returns the search, the decisions and the generations (for tests)."""
    args = example_args(argv, __doc__)
    cfg = QUICK if args.quick else NORMAL
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    data = json.loads(DATA.read_text())
    food, other = data["food_train"][: cfg.n_train], data["other_train"][: cfg.n_train]
    test = data["food_test"][: cfg.n_test] + data["other_test"][: cfg.n_test]
    truth = [True] * cfg.n_test + [False] * cfg.n_test

    print(f"1. condition direction: mean(cooking) - mean(other) of the prompt's mean activation, "
          f"{cfg.n_train} requests each, layers {list(cfg.layers)}")
    directions = ms.extract(model, food, other, sites=[f"layers.{i}" for i in cfg.layers], chat=True, read="mean",
                            progress=False)

    print("\n2. threshold search (cosine with the direction, F1 on the training requests)")
    search = an.find_threshold(model, food, other, directions=directions, read="mean", measure="cosine", chat=True)
    print("   " + search.to_text(top=5).replace("\n", "\n   "))
    condition = search.condition(name="cooking")
    b = search.best
    print(f"   chosen: {b.site} cosine {b.compare} {b.threshold:.4f}")

    print(f"\n3. unit Love - Hate x {cfg.scale:g} at layers.{cfg.steer_layer} on the generated tokens, only where the "
          f"condition holds; {len(test)} held-out requests in one batch")
    pos, neg = zip(*PAIRS)
    love = ms.extract(model, list(pos), list(neg), sites=[f"layers.{cfg.steer_layer}"], read="last",
                      progress=False).normalized()
    steer = {key: spec.when(condition) for key, spec in love.to_interventions(scale=cfg.scale, positions="generated").items()}
    gated = model.batch_generate(test, max_tokens=cfg.max_tokens, chat=True, interventions=steer)
    plain = model.batch_generate(test, max_tokens=cfg.max_tokens, chat=True)
    met = [r[0]["met"] for r in gated.conditions]
    accuracy = float(np.mean([m == t for m, t in zip(met, truth)]))
    print(f"   condition accuracy on held-out requests: {sum(m == t for m, t in zip(met, truth))}/{len(test)} "
          f"({100 * accuracy:.0f} %)")
    unchanged = sum(g == p for g, p, m in zip(gated.token_ids, plain.token_ids, met) if not m)
    print(f"   requests the condition left out, answered exactly as without steering: {unchanged}/{met.count(False)}")
    for i in (0, cfg.n_test):
        print(f"\n   [{'cooking' if truth[i] else 'other'}] {test[i]}  (condition {'met' if met[i] else 'not met'}, "
              f"cosine {gated.conditions[i][0]['values']['cooking']:.3f})")
        print(f"     plain:       {plain.texts[i].strip()[:160]!r}")
        print(f"     conditional: {gated.texts[i].strip()[:160]!r}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return {"search": search, "condition": condition, "love": love, "steer": steer, "test": test, "truth": truth,
            "met": met, "accuracy": accuracy, "gated": gated, "plain": plain, "model": model}


if __name__ == "__main__":
    main()
