"""Contrastive Activation Addition (Rimsky et al. 2024) written against mlxterp's API.

The steps of mlxterp's CAA tutorial (tutorials/04_steering_vectors), run through mlx_steer's
mlxterp facade: only the import differs from mlxterp code.

    python examples/caa_mlxterp.py [--model PATH] [--quick]

1. trace contrast prompts and read each one's last-token residual stream (``trace.activations``);
2. steering vector = mean(positive) - mean(negative) at the middle layer;
3. next-token predictions without, with and against the vector (``model.output.save()``);
4. a strength sweep, multi-layer steering, and steered generation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx_steer  # noqa: F401  -- before mlx: on Linux it gives MLX the optimized BLAS
import mlx.core as mx
import numpy as np

from mlx_steer.compat.mlxterp import InterpretableModel
from mlx_steer.compat.mlxterp import interventions as iv
from mlx_steer.demo.examples import example_args, example_model_path

POSITIVE = [
    "I think this is great",
    "I love the way it works",
    "This makes me so happy",
    "I'm thrilled, it's excellent",
    "What a wonderful day",
]
NEGATIVE = [
    "I think this is terrible",
    "I hate the way it works",
    "This makes me so sad",
    "I'm furious, it's awful",
    "What a horrible day",
]
TEST_PROMPT = "I think this product is"
GOOD_WORDS = [" great", " good", " excellent", " amazing"]
BAD_WORDS = [" terrible", " bad", " awful", " poor"]


@dataclass(frozen=True)
class Settings:
    n_prompts: int  # contrast prompts per side
    strength: float  # for the +/- comparison and generation
    strengths: tuple[float, ...]  # the strength sweep
    multi_layers: tuple[int, ...]
    multi_strength: float
    gen_tokens: int


NORMAL = Settings(5, 1.0, (0.0, 0.5, 1.0, 2.0, 4.0), (6, 9, 12, 15), 0.5, 20)
QUICK = Settings(2, 1.0, (0.0, 2.0), (6, 15), 0.5, 3)


def last_token_activations(model: InterpretableModel, prompts: list[str], layers: list[int]) -> dict[int, list[mx.array]]:
    """Per layer, each prompt's residual stream at its last token (one trace per prompt)."""
    found: dict[int, list[mx.array]] = {i: [] for i in layers}
    for prompt in prompts:
        with model.trace(prompt) as trace:
            pass
        for i in layers:
            # mlxterp keys activations by module path, e.g. "model.model.layers.15"
            key = next(k for k in trace.activations if k.endswith(f"layers.{i}"))
            found[i].append(trace.activations[key][0, -1, :])
    for acts in found.values():
        mx.eval(acts)
    return found


def mean_difference(pos: list[mx.array], neg: list[mx.array]) -> mx.array:
    vector = mx.mean(mx.stack(pos), axis=0) - mx.mean(mx.stack(neg), axis=0)
    mx.eval(vector)
    return vector


def top_predictions(logits: mx.array, k: int = 5) -> list[tuple[int, float]]:
    """(token id, logit) of the k best next tokens at the last position."""
    last = logits[0, -1, :] if logits.ndim == 3 else logits
    best = mx.argsort(-last)[:k]
    return [(int(i), float(last[i])) for i in best.tolist()]


def next_token_logits(model: InterpretableModel, prompt: str, interventions: dict | None = None) -> mx.array:
    with model.trace(prompt, interventions=interventions):
        logits = model.output.save()
    mx.eval(logits)
    return logits


def main(argv: list[str] | None = None) -> dict:
    """Run the tutorial; returns the vectors, logits and texts it printed (for tests)."""
    args = example_args(argv, __doc__)
    cfg = QUICK if args.quick else NORMAL
    t0 = time.perf_counter()
    model = InterpretableModel(example_model_path(args))

    # -- Part 1: a steering vector at the middle layer --------------------------------------------
    layer_idx = len(model.layers) // 2
    layers = sorted({layer_idx, *cfg.multi_layers})
    pos_acts = last_token_activations(model, POSITIVE[: cfg.n_prompts], layers)
    neg_acts = last_token_activations(model, NEGATIVE[: cfg.n_prompts], layers)
    steering_vector = mean_difference(pos_acts[layer_idx], neg_acts[layer_idx])
    print(f"{len(model.layers)} layers; steering at layer {layer_idx}")
    print(f"steering vector shape {steering_vector.shape}, norm {float(mx.linalg.norm(steering_vector)):.2f}")

    good = [model.encode(w)[-1] for w in GOOD_WORDS]
    bad = [model.encode(w)[-1] for w in BAD_WORDS]

    def describe(logits: mx.array) -> str:
        last = logits[0, -1]
        margin = float(mx.mean(last[mx.array(good)]) - mx.mean(last[mx.array(bad)]))
        tops = ", ".join(f"{model.token_to_str(t)!r} {s:.1f}" for t, s in top_predictions(logits))
        return f"good-bad logit margin {margin:+.2f} | {tops}"

    key = f"layers.{layer_idx}"
    s = cfg.strength
    normal = next_token_logits(model, TEST_PROMPT)
    steered = next_token_logits(model, TEST_PROMPT, {key: iv.add_vector(steering_vector * s)})
    against = next_token_logits(model, TEST_PROMPT, {key: iv.add_vector(-steering_vector * s)})
    print(f"\n{TEST_PROMPT!r}")
    for label, logits in (("unsteered", normal), (f"+{s:g} x vector", steered), (f"-{s:g} x vector", against)):
        print(f"  {label:<14} {describe(logits)}")

    # -- Part 2: strength --------------------------------------------------------------------------
    print("\nstrength -> top next token")
    by_strength = {}
    for strength in cfg.strengths:
        spec = {key: iv.add_vector(steering_vector * strength)} if strength else None
        by_strength[strength] = logits = next_token_logits(model, TEST_PROMPT, spec)
        best, _ = top_predictions(logits, k=1)[0]
        print(f"  {strength:4.1f}: {model.token_to_str(best)!r:14} ({describe(logits).split(' |')[0]})")

    # -- Part 3: several layers at once ------------------------------------------------------------
    multi_vectors = {i: mean_difference(pos_acts[i], neg_acts[i]) for i in cfg.multi_layers}
    multi_spec = {f"layers.{i}": iv.add_vector(v * cfg.multi_strength) for i, v in multi_vectors.items()}
    multi = next_token_logits(model, TEST_PROMPT, multi_spec)
    print(f"\nlayers {list(cfg.multi_layers)} at {cfg.multi_strength:g} x their vectors: {describe(multi)}")

    # -- Exercise: steering during generation ------------------------------------------------------
    print(f"\ngreedy continuations of {TEST_PROMPT!r}:")
    texts = {}
    for label, sign in (("unsteered", 0), (f"+{s:g} x vector", 1), (f"-{s:g} x vector", -1)):
        spec = {key: iv.add_vector(steering_vector * (sign * s))} if sign else None
        texts[sign] = model.generate(TEST_PROMPT, max_tokens=cfg.gen_tokens, interventions=spec).text
        print(f"  [{label:>14}] {texts[sign].strip()!r}")
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return {
        "model": model, "layer": layer_idx, "test_prompt": TEST_PROMPT, "strength": s,
        "positive_prompts": POSITIVE[: cfg.n_prompts], "negative_prompts": NEGATIVE[: cfg.n_prompts],
        "positive_acts": np.array(mx.stack(pos_acts[layer_idx])), "negative_acts": np.array(mx.stack(neg_acts[layer_idx])),
        "steering_vector": np.array(steering_vector), "normal": normal, "steered": steered, "against": against,
        "by_strength": by_strength, "multi_vectors": {i: np.array(v) for i, v in multi_vectors.items()},
        "multi_strength": cfg.multi_strength, "multi": multi, "texts": texts, "gen_tokens": cfg.gen_tokens,
    }


if __name__ == "__main__":
    main()
