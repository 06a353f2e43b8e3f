"""Persona directions in a chat model: extraction, persistence after steering stops, and what a
conversation transcript itself writes along them.

    python examples/persona_persistence.py [--model PATH] [--quick]

1. chat-formatted prompts asking for a persona vs the same questions asked plainly; the persona
   - plain mean difference at the last prompt token, per persona and layer, stored as one
   (n_personas, n_layers, D) numpy array;
2. steer the first tokens of a reply, then let it run free, projecting every token's residual
   stream on the persona direction (``analysis.persistence_run``);
3. a probe question inserted into an in-persona transcript and a plain one after 1, 2, ...
   exchanges, with the residual stream read at the last prompt token (just before the reply); the
   in-persona minus plain readings are compared (``similarity.cosine_matrix``), and their top
   singular direction (``similarity.top_singular_direction``) is used to steer a fresh reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import mlx_steer as ms
from mlx_steer import analysis
from mlx_steer.vectors import similarity
from mlx_steer.engine import interventions as iv
from mlx_steer.demo.examples import example_args, example_model_path

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
QUICK = Settings(2, 1, (2, 4), 4, 2, 2, 2.0, 2)  # shallow layers: recording forwards stop there


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


def transcript(exchanges: int, *, persona: bool) -> list[dict]:
    """System prompt, ``exchanges`` user/assistant turns, then the probe question."""
    messages = [{"role": "system", "content": SYSTEM}]
    for user, in_persona, plain in TURNS[:exchanges]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": in_persona if persona else plain}]
    return messages + [{"role": "user", "content": PROBE}]


def chat_ids(model, messages: list[dict]) -> list[int]:
    text = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return model.encode(text)


def main(argv: list[str] | None = None) -> dict:
    """Run the walkthrough; returns the persona array, persistence runs and transcript readings."""
    args = example_args(argv, __doc__)
    cfg = QUICK if args.quick else NORMAL
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    personas, questions = list(PERSONAS)[: cfg.personas], QUESTIONS[: cfg.questions]

    print(f"1. persona - plain at the last prompt token, {len(questions)} chat questions, layers {list(cfg.layers)}")
    vectors = persona_vectors(model, personas, questions, cfg.layers)
    print(f"   array {vectors.shape} {vectors.dtype}; norms:")
    print("   " + " " * 8 + "".join(f"{f'layer {i}':>10}" for i in cfg.layers))
    for name, row in zip(personas, vectors):
        print(f"   {name:<8}" + "".join(f"{np.linalg.norm(v):10.2f}" for v in row))
    li = cfg.layers.index(cfg.steer_layer)
    cos = similarity.cosine_matrix(vectors[:, li])
    print(f"   cosine between personas at layer {cfg.steer_layer}: " + "; ".join(
        f"{a}/{b} {cos[i, j]:+.2f}" for i, a in enumerate(personas) for j, b in enumerate(personas) if i < j))

    site = f"layers.{cfg.steer_layer}"
    direction = vectors[personas.index(STEER_PERSONA), li]
    total = cfg.steer_tokens + cfg.free_tokens
    print(f"\n2. {cfg.scale:g} x {STEER_PERSONA} vector at {site} for {cfg.steer_tokens} tokens, then {cfg.free_tokens} free;"
          f" projection on the {STEER_PERSONA} direction")
    run = analysis.persistence_run(
        model, REPLY_TO, steer_tokens=cfg.steer_tokens, free_tokens=cfg.free_tokens, site=site,
        vector=direction, scale=cfg.scale, chat=True, system=SYSTEM, suppress_eos=True,
    )
    no_eos = [model.ban_tokens_processor(model.eos_token_ids)]
    base = analysis.projection_monitor(model, REPLY_TO, site=site, direction=direction, max_tokens=total,
                                       chat=True, system=SYSTEM, logits_processors=no_eos)
    steer, free = run.projections[run.steered], run.projections[~run.steered]
    print(f"   steered reply: {run.text.strip()!r}\n   plain reply:   {base.text.strip()!r}")
    print(f"   mean projection: steered phase {steer.mean():+.2f} | free phase {free.mean():+.2f} | "
          f"unsteered reply {base.projections.mean():+.2f}")

    print(f"\n3. probe {PROBE!r} after 1..{cfg.points} exchanges; read at the last prompt token of {site}")
    points = list(range(1, cfg.points + 1))
    rows = [chat_ids(model, transcript(k, persona=p)) for p in (True, False) for k in points]
    key = model.resolve(site).key
    tr = model.run(rows, record=[key], record_positions="last", logits=False)
    reads = model.to_numpy(tr.activations[key])[:, -1]
    diffs = reads[: len(points)] - reads[len(points) :]  # in-persona minus plain transcript, per point
    to_vector = [similarity.cosine(d, direction) for d in diffs]
    print("   " + "; ".join(f"after {k}: |diff| {np.linalg.norm(d):.1f}, cos to {STEER_PERSONA} vector {c:+.2f}"
                            for k, d, c in zip(points, diffs, to_vector)))
    cmat = similarity.cosine_matrix(diffs)
    print("   cosine between insertion points:\n" + "\n".join("     " + " ".join(f"{x:+.2f}" for x in r) for r in cmat))
    top, explained = similarity.top_singular_direction(diffs)
    strength = 2.0 * float(np.mean(diffs @ top))  # twice the typical in-persona shift along it
    print(f"   top singular direction explains {explained:.0%}; steering with it x {strength:.1f}:")
    steered_reply = model.generate(REPLY_TO, max_tokens=total, chat=True, system=SYSTEM, logits_processors=no_eos,
                                   interventions={site: iv.add_vector(top, scale=strength)})
    print(f"   plain:   {base.text.strip()!r}\n   steered: {steered_reply.strip()!r}")
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return {
        "model": model, "personas": personas, "questions": questions, "layers": cfg.layers, "vectors": vectors,
        "site": site, "direction": direction, "scale": cfg.scale, "persistence": run, "baseline": base,
        "points": points, "transcripts": rows, "reads": reads, "diffs": diffs, "cosine_matrix": cmat,
        "top_direction": top, "explained": explained, "strength": strength,
        "steered_reply": steered_reply,
    }


if __name__ == "__main__":
    main()
