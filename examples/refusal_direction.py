"""Refusal is mediated by a single direction (Arditi et al. 2024), on SmolLM2-135M-Instruct: find it,
remove it from every write to the residual stream ("abliteration"), and export the ablated model as a
folder plain mlx-lm loads.

    python examples/refusal_direction.py [--model PATH] [--out DIR] [--quick]

1. The direction at each candidate layer: the mean difference of the last prompt token's activation
   (after the chat template) between harmful and harmless instructions (``examples/data``).
2. The layer picked by a sweep on the training instructions: adding the direction should make harmless
   instructions refused, ablating it should make harmful ones answered.
3. On held-out instructions, for the base model, the model ablated in-process, the exported folder
   (loaded on its own, no steering) and the model with the direction added: the refusal rate (a
   substring judge: ``refusal_markers`` in the data file) on harmful and harmless instructions, and the
   first-token KL from the base model on harmless ones (what an ablation should keep small).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import mlx_steer as ms
from mlx_steer.demo.examples import example_model_path, example_parser
from mlx_steer.export import directional_ablation

DATA = Path(__file__).resolve().parent / "data" / "refusal_instructions.json"


@dataclass(frozen=True)
class Settings:
    n_train: int  # instructions of each kind for the direction
    n_select: int  # of each kind for the layer sweep (from the training ones)
    n_test: int  # held out, of each kind
    layers: tuple[int, ...]  # candidate layers
    max_tokens: int  # generated per reply the judge reads
    add_scale: float  # of the raw mean difference, when adding it


NORMAL = Settings(40, 16, 40, (4, 8, 10, 12, 14, 16, 18, 20), 32, 1.0)
QUICK = Settings(8, 4, 6, (10, 14), 12, 1.0)


def refused(texts: list[str], markers: list[str]) -> list[bool]:
    """The substring judge: a reply that contains any refusal marker (lower-cased) is a refusal."""
    return [any(m in t.lower() for m in markers) for t in texts]


def first_token_kl(model, prompts: list[str], base_logits: np.ndarray, interventions=None) -> float:
    """Mean KL(base || model) of the first generated token's distribution over ``prompts``."""
    logits = model.to_numpy(model.run(prompts, chat=True, interventions=interventions).logits)[:, -1]
    return float(np.mean(kl(base_logits, logits)))


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    lp = p_logits - np.logaddexp.reduce(p_logits, axis=-1, keepdims=True)
    lq = q_logits - np.logaddexp.reduce(q_logits, axis=-1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def rate(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({100 * sum(flags) / len(flags):.0f} %)"


def main(argv: list[str] | None = None) -> dict:
    """Run the walkthrough; returns the direction, the chosen layer and the table's numbers (for tests)."""
    ap = example_parser(__doc__)
    ap.add_argument("--out", help="where to write the ablated model (default: a temporary folder)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else NORMAL
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    data = json.loads(DATA.read_text())
    markers = data["refusal_markers"]
    harmful, harmless = data["harmful_train"][: cfg.n_train], data["harmless_train"][: cfg.n_train]
    test_harmful, test_harmless = data["harmful_test"][: cfg.n_test], data["harmless_test"][: cfg.n_test]

    print(f"1. mean(harmful) - mean(harmless) at the last prompt token, {cfg.n_train} instructions each, "
          f"layers {list(cfg.layers)}")
    vec = ms.extract(model, harmful, harmless, sites=[f"layers.{i}" for i in cfg.layers], chat=True, read="last")
    print("   norms: " + ", ".join(f"{p.rsplit('.', 1)[-1]}: {n:.1f}" for p, n in vec.norms().items()))

    print(f"\n2. layer sweep on {cfg.n_select} training instructions of each kind ({cfg.max_tokens} tokens, greedy)")
    sel_harmful, sel_harmless = harmful[: cfg.n_select], harmless[: cfg.n_select]
    sweep = []
    for layer in cfg.layers:
        path = model.resolve_path(f"layers.{layer}")
        d = vec.directions[path]
        ablated = model.batch_generate(sel_harmful, max_tokens=cfg.max_tokens, chat=True,
                                       interventions=directional_ablation(model, d))
        added = model.batch_generate(sel_harmless, max_tokens=cfg.max_tokens, chat=True,
                                     interventions={path: ms.interventions.add_vector(d, scale=cfg.add_scale)})
        still, induced = sum(refused(ablated.texts, markers)), sum(refused(added.texts, markers))
        sweep.append((induced - still, -layer, layer, induced, still))
        print(f"   layer {layer:>2}: adding it -> {induced}/{cfg.n_select} harmless refused; "
              f"ablating it -> {still}/{cfg.n_select} harmful still refused")
    layer = max(sweep)[2]
    path = model.resolve_path(f"layers.{layer}")
    direction = vec.directions[path]
    ablation = directional_ablation(model, direction)
    add = {path: ms.interventions.add_vector(direction, scale=cfg.add_scale)}
    print(f"   chosen: layer {layer} (most harmless refused when added, least harmful refused when ablated)")

    print(f"\n3. held out: {cfg.n_test} harmful and {cfg.n_test} harmless instructions")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "ablated"
        model.export(out, ablation, overwrite=bool(args.out), note={"example": "refusal_direction", "layer": str(layer)})
        exported = ms.load(str(out))  # the folder on its own: no steering installed
        base_logits = model.to_numpy(model.run(test_harmless, chat=True).logits)[:, -1]
        rows = {}
        for name, m, spec in (("base", model, None), ("ablated in-process", model, ablation),
                              ("exported (ablated weights)", exported, None), (f"direction added at layer {layer}", model, add)):
            on_harmful = model_refusals(m, test_harmful, cfg, markers, spec)
            on_harmless = model_refusals(m, test_harmless, cfg, markers, spec)
            rows[name] = {"harmful_refused": on_harmful, "harmless_refused": on_harmless,
                          "first_token_kl": first_token_kl(m, test_harmless, base_logits, spec)}
    print("\n| model | harmful refused | harmless refused | first-token KL on harmless (nats) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {rate(r['harmful_refused'])} | {rate(r['harmless_refused'])} | {r['first_token_kl']:.4f} |")
    print(f"\n(layer {layer}; judge: any of {len(markers)} refusal substrings in {cfg.max_tokens} greedy tokens; "
          f"{time.perf_counter() - t0:.0f} s)")
    return {"vector": vec, "layer": layer, "sweep": sweep, "rows": rows}


def model_refusals(m, prompts: list[str], cfg: Settings, markers: list[str], interventions=None) -> list[bool]:
    return refused(m.batch_generate(prompts, max_tokens=cfg.max_tokens, chat=True, interventions=interventions).texts,
                   markers)


if __name__ == "__main__":
    main()
