"""Sparse autoencoder features on SmolLM2-135M-Instruct: a prompt's top features per token, and a
generation steered by one feature (its decoder direction added) and with it clamped off.

    mlx-steer sae train --model SMOLLM2 --site layers.12 --prompts prompts.txt -o sae12   # see docs/sae.md
    python examples/sae_features.py --sae sae12 [--model PATH] [--word pizza] [--quick]

Without ``--sae`` a small SAE is trained here first, on the prompts in ``examples/data``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import mlx_steer as ms
from mlx_steer import sae as S
from mlx_steer.demo.examples import example_model_path, example_parser

PROMPT = "My favourite food is pizza with cheese and tomatoes, baked in a hot oven."
STEER_PROMPT = "Tell me about your weekend."
DATA = Path(__file__).resolve().parent / "data"


def small_training_prompts() -> list[str]:
    """Every instruction in the example data files (a few hundred), for an SAE trained on the spot."""
    out: list[str] = []
    for name in ("refusal_instructions.json", "topic_prompts.json"):
        data = json.loads((DATA / name).read_text())
        out += [p for key, v in data.items() if isinstance(v, list) and key != "refusal_markers" for p in v]
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the walkthrough; returns the SAE, the top features, the chosen feature and the texts (for tests)."""
    ap = example_parser(__doc__)
    ap.add_argument("--sae", help="a trained SAE folder (default: train a small one here)")
    ap.add_argument("--word", default="pizza", help="the prompt's word whose top feature steers (default pizza)")
    ap.add_argument("--feature", type=int, default=None, help="the feature to steer with (default: chosen at --word)")
    ap.add_argument("--scale", type=float, default=None, help="how much of the feature to add (default: 4x its "
                    "activation on the word)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    if args.sae:
        sae = S.load_sae(args.sae, model=model)
    else:
        prompts = small_training_prompts()[: 40 if args.quick else None]
        acts = S.record_tokens(model, prompts, site="layers.12")
        sae, report = S.train_topk_sae(acts, features=256 if args.quick else 2048, k=16,
                                       site="layers.12", epochs=2 if args.quick else 8, batch_tokens=256)
        print(f"trained here on {len(prompts)} prompts: held-out explained variance {report.explained_variance:.3f}")
    print(f"SAE: {sae.architecture} k={sae.k}, {sae.d_sae} features at {sae.site}")

    ids = model.encode(PROMPT)
    acts = model.to_numpy(model.run([ids], record=[sae.site]).activations[sae.site])[0]
    top = sae.top_features(acts, k=3)
    pieces = [model.tokenizer.decode([t]) for t in ids]
    print(f"\n1. top features per token of {PROMPT!r}")
    for piece, feats in zip(pieces, top):
        print(f"   {piece!r:>14}  " + "  ".join(f"#{f}:{a:.2f}" for f, a in feats))
    rec = sae.reconstruction(acts)  # leaves out the tokens training leaves out (the first: the attention sink)
    print(f"   this prompt (positions {rec['skipped']} left out): explained variance {rec['explained_variance']:.3f}, "
          f"L0 {rec['l0']:.1f}")

    where = next((i for i, p in enumerate(pieces) if args.word in p.lower()), len(pieces) - 1)
    f_all = sae.encode(acts)
    common = (f_all > 0).mean(0)  # a feature firing on most tokens says little about this word
    candidates = [f for f, _ in top[where] if common[f] < 0.5] or [top[where][0][0]]
    feature = int(candidates[0]) if args.feature is None else sae.check_feature(args.feature)
    scale = args.scale if args.scale is not None else 4.0 * float(f_all[where, feature])
    print(f"\n2. feature #{feature} ({f_all[where, feature]:.1f} at {pieces[where]!r}, fires on {100 * common[feature]:.0f} % of the prompt's "
          f"tokens), added x {scale:.1f} on the generated tokens of {STEER_PROMPT!r}")
    n = 8 if args.quick else 40
    plain = model.generate(STEER_PROMPT, chat=True, max_tokens=n)
    steered = model.generate(STEER_PROMPT, chat=True, max_tokens=n, interventions=sae.add(feature, scale,
                                                                                             positions="generated"))
    print(f"   plain:   {plain.strip()!r}\n   steered: {steered.strip()!r}")
    off = model.generate(PROMPT, max_tokens=n, interventions=sae.clamp(feature, 0.0))
    print(f"\n3. the prompt continued with feature #{feature} clamped to 0 (the SAE's error kept):\n   {off.strip()!r}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return {"model": model, "sae": sae, "ids": ids, "top": top, "feature": feature, "scale": scale, "plain": plain,
            "steered": steered, "clamped": off, "where": where, "acts": acts}


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
