"""Steered decode with a span selector ÷ plain mlx-lm on SmolLM2 (target >= 0.95), measured in one run.

The method of bench/generate_overhead.py: plain mlx-lm ``stream_generate`` against the same tokens
from mlx_steer steering one layer (a small vector: the same tokens, the same work), EOS banned so
every run decodes the same number of tokens, one warm-up of 16 tokens per variant, then runs
interleaved (plain, all, between, answer, ~special, plain, ...) so drift on a shared machine hits
every variant alike; medians of decode tokens/s and their ratio to plain's median.

Variants (steering positions): ``"all"``; ``spans.between("<think>", "</think>")``;
``spans.answer(open="<think>", close="</think>")``; ``~spans.special()``. SmolLM2 has no think
tokens: the markers are text, and the prompt ends inside an open ``<think>``, so ``between``
steers every decoded token and ``answer`` none (the "steered" column counts them, located offline
in each run's tokens). ``special`` reads each position's own token: a decode step computes that
part of the mask on the device from the token it runs on (before: a host read, one sync per step).

    python bench/spans.py [--tokens 48] [--repeats 11]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import mlx_steer as ms  # noqa: E402  -- before mlx: on Linux it gives MLX the optimized BLAS

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from generate_overhead import eos_banned  # noqa: E402
from machine import cpu_name  # noqa: E402
from mlx_steer import spans  # noqa: E402
from mlx_steer.engine import interventions as iv  # noqa: E402
from mlx_steer.engine.span_locate import locate  # noqa: E402
from table import markdown  # noqa: E402

PROMPT = "Question: is 91 a prime number? Think it through, then answer.\n<think>\n"
TARGET = 0.95
BENCHMARK = "MLX steered decode with span selectors, SmolLM2-135M"


def selectors() -> dict[str, object]:
    """Each variant's steering positions (None: plain mlx-lm)."""
    return {
        "plain mlx-lm": None,
        'positions="all"': "all",
        'between("<think>", "</think>")': spans.between("<think>", "</think>"),
        'answer(open="<think>", close="</think>")': spans.answer(open="<think>", close="</think>"),
        "~special()": ~spans.special(),
    }


def decode(m: ms.SteerableModel, prompt: list[int], opts: dict, tokens: int, eos_free) -> tuple[float, list[int]]:
    """Decode tokens/s of one run, and the tokens it generated."""
    from mlx_lm import stream_generate

    if opts:
        stream = m.stream_generate(prompt, max_tokens=tokens, logits_processors=[eos_free], **opts)
    else:
        stream = stream_generate(m.model, m.tokenizer, mx.array(prompt), max_tokens=tokens, logits_processors=[eos_free])
    last, out = None, []
    for last in stream:
        out.append(int(last.token))
    assert last is not None
    return last.generation_tps, out


def bench(m: ms.SteerableModel, tokens: int, repeats: int) -> list[dict]:
    eos_free = eos_banned(m)
    prompt = m.encode(PROMPT)
    v = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32) * 0.01  # small: same tokens
    site = f"layers.{m.num_layers // 2}"
    sels = selectors()
    runs = {k: {} if s is None else {"interventions": {site: iv.add_vector(v, positions=s)}} for k, s in sels.items()}
    for opts in runs.values():  # warm-up
        decode(m, prompt, opts, 16, eos_free)
    tps: dict[str, list[float]] = {k: [] for k in runs}
    made: dict[str, set[tuple[int, ...]]] = {k: set() for k in runs}
    for _ in range(repeats):
        for label, opts in runs.items():
            t, out = decode(m, prompt, opts, tokens, eos_free)
            tps[label].append(t)
            made[label].add(tuple(out))
    generated = {seq for seqs in made.values() for seq in seqs}
    assert len(generated) == 1, f"variants generated different tokens: {len(generated)} distinct sequences"
    (seq,) = generated
    base, base_best = statistics.median(tps["plain mlx-lm"]), max(tps["plain mlx-lm"])
    rows = []
    for label, values in tps.items():
        med = statistics.median(values)
        sel = sels[label]
        row = {"benchmark": BENCHMARK, "variant": label, "value": med, "unit": "tok/s", "ratio": med / base}
        note = f"best-run ratio {max(values) / base_best:.3f}"
        if sel is not None:
            mask = locate(sel, [*prompt, *seq], tokenizer=m.tokenizer, prompt_len=len(prompt))
            note += f"; steers {int(mask[len(prompt):].sum())}/{len(seq)} decoded tokens"
        if sel is not None and not isinstance(sel, str):  # the span selectors
            row.update(target=f">= {TARGET:.2f}", met=med / base >= TARGET)
        rows.append({**row, "note": note})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="decode tokens per run (default 48)")
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats (default 11)")
    args = ap.parse_args()

    from mlx_steer.demo.real_model import prepare_smollm2

    t0 = time.time()
    m = ms.load(str(prepare_smollm2(verbose=False)))
    rows = bench(m, args.tokens, args.repeats)
    print(f"\nmachine: {cpu_name()}, mlx {md.version('mlx')}, device {mx.default_device()}; {args.tokens} tokens x "
          f"{args.repeats} interleaved repeats, steering layers.{m.num_layers // 2}; {time.time() - t0:.0f}s\n")
    print(markdown(rows))
    print("ratio: median tok/s vs plain's median (the target is checked on it); best-run ratio: fastest run vs "
          "plain's fastest")


if __name__ == "__main__":
    main()
