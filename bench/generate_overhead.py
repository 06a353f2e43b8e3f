"""Generation overhead of steering and recording, measured in one run.

For each model: plain mlx-lm ``stream_generate`` vs the same tokens with mlx_steer steering one
layer, steering every layer, and recording the last position of one layer. Runs are interleaved
(plain, 1 layer, all, record, plain, ...) so drift on a shared machine hits every variant alike;
the table reports medians of decode tokens/s and their ratio to plain.

    python bench/generate_overhead.py [--tokens 48] [--repeats 11] [--skip-smollm]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import mlx_steer as ms  # before mlx: on Linux it gives MLX the optimized BLAS

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_steer.engine import interventions as iv

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TARGETS = {"steer 1 layer": 0.97, "steer all layers": 0.93, "record last (1 layer)": 1 / 1.05}


def random_llama_100m(tokenizer) -> ms.SteerableModel:
    """A ~100M-parameter random llama (SmolLM2's vocabulary), built directly in MLX."""
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama", hidden_size=768, num_hidden_layers=12, intermediate_size=2048,
        num_attention_heads=12, num_key_value_heads=4, rms_norm_eps=1e-5,
        vocab_size=len(tokenizer.get_vocab()), tie_word_embeddings=True,
    )
    mx.random.seed(0)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return ms.SteerableModel(model, tokenizer, model_id="random-llama-100m")


def n_params(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))


def variants(m: ms.SteerableModel) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    v = rng.normal(size=m.hidden_size).astype(np.float32) * 0.01  # small: same tokens, same work
    mid = m.num_layers // 2
    return {
        "plain mlx-lm": {},
        "steer 1 layer": {"interventions": {f"layers.{mid}": iv.add_vector(v)}},
        "steer all layers": {"interventions": {p: iv.add_vector(v) for p in m.layer_paths}},
        "record last (1 layer)": {"record": [f"layers.{mid}"], "record_positions": "last"},
    }


def decode_tps(m: ms.SteerableModel, opts: dict, tokens: int, eos_free) -> tuple[float, int]:
    from mlx_lm import stream_generate

    prompt = m.encode(PROMPT)
    if opts:
        stream = m.stream_generate(prompt, max_tokens=tokens, logits_processors=[eos_free], **opts)
    else:
        stream = stream_generate(m.model, m.tokenizer, mx.array(prompt), max_tokens=tokens, logits_processors=[eos_free])
    last = None
    for last in stream:
        pass
    return last.generation_tps, last.generation_tokens


def eos_banned(m: ms.SteerableModel):
    """A logits processor that makes EOS impossible: every variant generates the same number of tokens."""
    eos = list(m.tokenizer.eos_token_ids)

    def eos_free(toks, logits):
        logits[:, eos] = -mx.inf
        return logits

    return eos_free


def bench_model(name: str, m: ms.SteerableModel, tokens: int, repeats: int) -> list[tuple]:
    eos_free = eos_banned(m)
    runs = variants(m)
    for opts in runs.values():  # warm-up
        decode_tps(m, opts, 16, eos_free)
    tps: dict[str, list[float]] = {k: [] for k in runs}
    counts = set()
    for _ in range(repeats):
        for label, opts in runs.items():
            t, n = decode_tps(m, opts, tokens, eos_free)
            tps[label].append(t)
            counts.add(n)
    assert len(counts) == 1, f"variants generated different token counts: {counts}"
    base, base_best = statistics.median(tps["plain mlx-lm"]), max(tps["plain mlx-lm"])
    rows = []
    for label, values in tps.items():
        med = statistics.median(values)
        target = TARGETS.get(label)
        ok = "" if target is None else ("yes" if med / base >= target else "NO")
        rows.append((name, label, med, med / base, ok, max(values) / base_best))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="decode tokens per run (default 48)")
    ap.add_argument("--repeats", type=int, default=11,
                    help="interleaved repeats (default 11: short runs, many of them, ride out a noisy machine)")
    ap.add_argument("--skip-smollm", action="store_true", help="only the random 100M llama")
    args = ap.parse_args()

    from mlx_steer.demo.real_model import prepare_smollm2

    smol = ms.load(str(prepare_smollm2(verbose=False)))
    models = {}
    rand = random_llama_100m(smol.tokenizer)
    models[f"random llama ({n_params(rand.model) / 1e6:.0f}M)"] = rand
    if not args.skip_smollm:
        models["SmolLM2-135M-Instruct"] = smol
    t0 = time.time()
    rows = []
    for name, m in models.items():
        rows += bench_model(name, m, args.tokens, args.repeats)
    print(f"\nmachine: {platform.machine()} {platform.system()}, mlx {mx.__version__}, device {mx.default_device()}, "
          f"{args.tokens} tokens x {args.repeats} interleaved repeats, {time.time() - t0:.0f}s")
    print(f"{'model':<28} {'variant':<24} {'tok/s':>8} {'ratio':>7} {'target met':>10} {'best ratio':>10}")
    for name, label, t, ratio, ok, best in rows:
        print(f"{name:<28} {label:<24} {t:8.1f} {ratio:7.3f} {ok:>10} {best:10.3f}")
    print("ratio: median tok/s vs plain's median (targets are checked on it); best ratio: fastest run vs plain's fastest")


if __name__ == "__main__":
    main()
