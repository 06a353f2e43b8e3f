"""Common nnsight steering and ablation recipes, done with mlx_steer.

    python examples/nnsight_recipes.py [--model PATH] [--quick]

In nnsight one edits proxies inside ``with model.trace(...)`` (``layer.output[0][:, -1] += v``).
Here every edit is a value, ``{site: intervention}``, handed to ``run``, ``generate`` or
``steer``; sites are module paths plus a hook point (``layers.7``, ``...o_proj:input``).

 1. contrastive mean-difference vector       6. mean ablation over calibration prompts
 2. steering one layer at the last position   7. a linear-probe direction
 3. the same steering on every generated step 8. multi-layer weighted steering
 4. a persistent edit reused across calls     9. tokens a vector promotes and demotes
 5. zero-ablating one attention head
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx_steer as ms  # before mlx: on Linux it gives MLX the optimized BLAS

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_steer import analysis
from mlx_steer.vectors import similarity
from mlx_steer.engine import interventions as iv
from mlx_steer.demo.examples import example_args, example_model_path

POSITIVE = [
    "I love this. It makes me so happy and grateful.",
    "What a wonderful, beautiful day. I adore it.",
    "This is fantastic news, I am delighted!",
    "The movie was brilliant, heartwarming and uplifting.",
]
NEGATIVE = [
    "I hate this. It makes me so angry and bitter.",
    "What an awful, miserable day. I despise it.",
    "This is terrible news, I am disgusted!",
    "The movie was dreadful, depressing and ugly.",
]
CALIBRATION = [
    "The weather today is mild with some clouds.",
    "She walked to the market to buy bread.",
    "Numbers can be added, subtracted and multiplied.",
    "The train leaves the station at noon.",
    "He opened the window and read a book.",
    "Rivers flow from the mountains to the sea.",
]
PROMPT = "I think that my neighbour is"
FACT, ANSWER = "The capital of France is", " Paris"
LAYER = 7  # of 30 for SmolLM2: early-middle layers move sentiment and keep text fluent
MULTI = {5: 0.5, 7: 1.0, 9: 0.5}  # layer -> weight
HEAD_LAYER, MLP_LAYER = 10, 2


@dataclass(frozen=True)
class Settings:
    n_contrast: int  # prompts per side
    n_calibration: int
    heads: int | None  # heads to try (None: all)
    strength: float
    gen_tokens: int


NORMAL = Settings(4, 6, None, 6.0, 20)
QUICK = Settings(2, 2, 2, 6.0, 3)


def header(title: str) -> None:
    print(f"\n## {title}")


def top_next(model, logits: mx.array, k: int = 5) -> str:
    last = np.array(logits[0, -1].astype(mx.float32))
    return ", ".join(repr(model.tokenizer.decode([int(i)])) for i in np.argsort(-last)[:k])


def answer_logprob(model, interventions: dict | None = None) -> float:
    """log P(ANSWER | FACT) under ``interventions``."""
    answer = model.tokenizer.encode(ANSWER, add_special_tokens=False)[0]
    last = model.run(FACT, interventions=interventions).logits[0, -1]
    return float((last - mx.logsumexp(last))[answer])


def main(argv: list[str] | None = None) -> dict:
    """Run every recipe; returns what each computed (for tests)."""
    args = example_args(argv, __doc__)
    cfg = QUICK if args.quick else NORMAL
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    out: dict = {"model": model, "strength": cfg.strength}
    pos, neg = POSITIVE[: cfg.n_contrast], NEGATIVE[: cfg.n_contrast]
    site = model.resolve(f"layers.{LAYER}").key

    header(f"1. love - hate mean difference at layers {sorted(MULTI)} and the last (mean over each prompt)")
    sites = [f"layers.{i}" for i in sorted(MULTI)] + ["layers.-1"]
    vec = ms.extract(model, pos, neg, sites=sites, method="mean_diff", read="mean")
    for path, norm in vec.norms().items():
        print(f"  {path}: norm {norm:.2f}")
    out["vector"] = vec

    header(f"2. steer layer {LAYER} at the last position only, in one forward")
    steer_last = {site: iv.add_vector(vec[site], scale=cfg.strength, positions="last")}
    base = model.run(PROMPT).logits
    steered = model.run(PROMPT, interventions=steer_last).logits
    print(f"  {PROMPT!r} next tokens\n    unsteered: {top_next(model, base)}\n    steered:   {top_next(model, steered)}")
    out.update(base=base, steered_last=steered)

    header("3. the same intervention during generation ('last' = every new token)")
    plain = model.generate(PROMPT, max_tokens=cfg.gen_tokens)
    gen = model.generate(PROMPT, max_tokens=cfg.gen_tokens, interventions=steer_last)
    print(f"  unsteered: {plain.strip()!r}\n  steered:   {gen.strip()!r}")
    out.update(plain_text=plain, steered_text=gen)

    header("4. a persistent edit: installed once, used by every call until removed")
    handle = model.steer(vec.select([site]), scale=cfg.strength, positions="last")
    try:
        under_handle = model.run(PROMPT).logits
        handle_text = model.generate(PROMPT, max_tokens=cfg.gen_tokens)
    finally:
        handle.remove()
    after = model.run(PROMPT).logits
    same_as_trace = bool(mx.array_equal(under_handle, steered))
    restored = bool(mx.array_equal(after, base))
    print(f"  logits under the handle == steered trace: {same_as_trace}; generation: {handle_text.strip()!r}")
    print(f"  after handle.remove() logits == unsteered: {restored}")
    out.update(under_handle=under_handle, handle_text=handle_text, after_remove=after)

    header(f"5. zero-ablate attention heads of layer {HEAD_LAYER}: log P({ANSWER!r} | {FACT!r})")
    heads_site = f"layers.{HEAD_LAYER}.self_attn.o_proj:input"  # concatenated head outputs
    clean = answer_logprob(model)
    heads = range(model.n_heads if cfg.heads is None else cfg.heads)
    by_head = {h: answer_logprob(model, {heads_site: iv.ablate_heads([h])}) for h in heads}
    print(f"  clean {clean:.3f}; change when one head is zeroed:")
    print("  " + "  ".join(f"h{h}: {lp - clean:+.3f}" for h, lp in by_head.items()))
    worst = min(by_head, key=by_head.get)
    print(f"  head {worst} matters most here")
    out.update(clean_logprob=clean, head_logprobs=by_head, heads_site=heads_site)

    header(f"6. mean-ablate layer {MLP_LAYER}'s MLP (mean over {cfg.n_calibration} calibration prompts)")
    # Position 0 carries the model's attention-sink activation, far larger than the rest: the mean
    # is taken over positions >= 1 and replaces them, leaving position 0 alone.
    mlp = model.resolve(f"layers.{MLP_LAYER}.mlp").key
    calib = CALIBRATION[: cfg.n_calibration]
    shortest = min(len(model.encode(c)) for c in calib)
    rows = model.run(calib, record=[mlp], record_positions=slice(1, shortest), reduce="mean", logits=False)
    mean = np.mean(model.to_numpy(rows.activations[mlp]), axis=0)  # average of per-prompt means
    after_sink = slice(1, len(model.encode(FACT)))
    mean_ablated = answer_logprob(model, {mlp: iv.mean_ablate(mean, positions=after_sink)})
    zeroed = answer_logprob(model, {mlp: iv.zero(positions=after_sink)})
    print(f"  log P: clean {clean:.3f} | mean-ablated {mean_ablated:.3f} | zero-ablated {zeroed:.3f}")
    out.update(calibration=calib, calibration_window=(1, shortest), mlp_site=mlp, mlp_mean=mean,
               mean_ablated=mean_ablated, zeroed=zeroed)

    header(f"7. a logistic-probe direction at layer {LAYER}")
    probe = ms.extract(model, pos, neg, sites=[site], method="probe", read="mean")
    cos = similarity.cosine(probe[site], vec[site])
    norm = float(np.linalg.norm(vec[site]))
    probe_steered = model.run(PROMPT, interventions=(probe * norm).to_interventions(scale=cfg.strength, positions="last")).logits
    print(f"  cosine(probe, mean difference) = {cos:.3f}")
    print(f"  steered along the probe (same norm): {top_next(model, probe_steered)}")
    out.update(probe=probe, probe_cosine=cos, probe_steered=probe_steered)

    header(f"8. weighted steering of layers {MULTI} at once")
    weights = {model.resolve_path(f"layers.{i}"): w for i, w in MULTI.items()}
    multi_scale = cfg.strength / sum(MULTI.values())
    multi_vec = vec.select(list(weights))
    multi = model.run(PROMPT, interventions=multi_vec.to_interventions(scale=multi_scale, weights=weights)).logits
    print(f"  {PROMPT!r} next tokens: {top_next(model, multi)}")
    out.update(multi_weights=weights, multi_scale=multi_scale, multi=multi)

    header("9. tokens the last layer's love - hate direction promotes (final norm + unembedding)")
    report = analysis.top_tokens(model, vec, site="layers.-1", k=6, final_norm=True)
    print("  " + report.to_text().replace("\n", "\n  "))
    out["top_tokens"] = report
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    main()
