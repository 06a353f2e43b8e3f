"""What recording attention patterns costs, and that it costs nothing when not asked, measured in one run.

Decode (the method of bench/generate_overhead.py: EOS banned, one warm-up of 16 tokens per variant,
interleaved runs, medians of decode tokens/s and their ratio to plain mlx-lm): plain mlx-lm;
mlx_steer steering one layer (patterns not asked: the default path, the fused attention kernel);
the same while ``record_patterns`` records one layer, and every layer. Prefill: ``model.run`` over
one prompt against the same run inside ``record_patterns``, one layer and every layer (each run
computes every layer: it records the last layer's last position; medians of wall time, the ratio is
the slowdown).

    python bench/patterns.py [--tokens 48] [--repeats 7] [--prompt-tokens 256]
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

from generate_overhead import PROMPT, eos_banned  # noqa: E402
from machine import cpu_name  # noqa: E402
from mlx_steer.engine import interventions as iv  # noqa: E402
from mlx_steer.heads import record_patterns  # noqa: E402
from table import markdown  # noqa: E402

DECODE = "MLX decode while recording attention patterns, SmolLM2-135M"
PREFILL = "MLX prefill with attention patterns, SmolLM2-135M"


def decode(m: ms.SteerableModel, prompt: list[int], steer: dict | None, layers: list[int] | None | bool, tokens: int,
           eos_free) -> float:
    from mlx_lm import stream_generate

    if steer is None:
        stream = stream_generate(m.model, m.tokenizer, mx.array(prompt), max_tokens=tokens, logits_processors=[eos_free])
        last = None
        for last in stream:
            pass
        assert last is not None
        return last.generation_tps
    if layers is False:
        steps = list(m.stream_generate(prompt, max_tokens=tokens, logits_processors=[eos_free], interventions=steer))
        return steps[-1].generation_tps
    assert layers is not True
    with record_patterns(m, layers=layers) as rec:
        steps = list(m.stream_generate(prompt, max_tokens=tokens, logits_processors=[eos_free], interventions=steer))
    assert rec.result() is not None
    return steps[-1].generation_tps


def bench_decode(m: ms.SteerableModel, tokens: int, repeats: int) -> list[dict]:
    eos_free = eos_banned(m)
    prompt = m.encode(PROMPT)
    v = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32) * 0.01  # small: same tokens
    mid = m.num_layers // 2
    steer = {f"layers.{mid}": iv.add_vector(v)}
    runs: dict[str, tuple[dict | None, list[int] | None | bool]] = {
        "plain mlx-lm": (None, False),
        f"steer layers.{mid} (patterns not asked)": (steer, False),
        f"steer + patterns of layer {mid}": (steer, [mid]),
        f"steer + patterns of all {m.num_layers} layers": (steer, None),
    }
    for s, layers in runs.values():  # warm-up
        decode(m, prompt, s, layers, 16, eos_free)
    tps: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for label, (s, layers) in runs.items():
            tps[label].append(decode(m, prompt, s, layers, tokens, eos_free))
    base, best = statistics.median(tps["plain mlx-lm"]), max(tps["plain mlx-lm"])
    return [{"benchmark": DECODE, "variant": label, "value": statistics.median(v), "unit": "tok/s",
             "ratio": statistics.median(v) / base, "note": f"best-run ratio {max(v) / best:.3f}"}
            for label, v in tps.items()]


def bench_prefill(m: ms.SteerableModel, prompt_tokens: int, repeats: int) -> list[dict]:
    ids = (m.encode(PROMPT) * (prompt_tokens // 8 + 1))[:prompt_tokens]
    mid = m.num_layers // 2
    last = {f"layers.{m.num_layers - 1}": "last"}  # a result to compute: every layer runs in every variant

    def with_patterns(layers: list[int] | None) -> None:
        with record_patterns(m, layers=layers) as rec:
            m.run([ids], record=last, logits=False)
        assert rec.result() is not None

    runs = {
        "run (no patterns)": lambda: m.run([ids], record=last, logits=False),
        f"with the patterns of layer {mid}": lambda: with_patterns([mid]),
        f"with the patterns of all {m.num_layers} layers": lambda: with_patterns(None),
    }
    for f in runs.values():
        f()
    secs: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for label, f in runs.items():
            t = time.perf_counter()
            f()
            secs[label].append(time.perf_counter() - t)
    base = statistics.median(secs["run (no patterns)"])
    return [{"benchmark": PREFILL, "variant": f"{label} ({prompt_tokens} tokens)", "value": statistics.median(v),
             "unit": "s", "ratio": statistics.median(v) / base} for label, v in secs.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="decode tokens per run (default 48)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats (default 7)")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="prefill prompt length (default 256)")
    args = ap.parse_args()

    from mlx_steer.demo.real_model import prepare_smollm2

    t0 = time.time()
    m = ms.load(str(prepare_smollm2(verbose=False)))
    rows = bench_decode(m, args.tokens, args.repeats) + bench_prefill(m, args.prompt_tokens, args.repeats)
    print(f"\nmachine: {cpu_name()}, mlx {md.version('mlx')}, device {mx.default_device()}; {args.tokens} tokens x "
          f"{args.repeats} interleaved repeats; {time.time() - t0:.0f}s\n")
    print(markdown(rows))
    print("decode ratio: median tok/s vs plain mlx-lm's median; prefill ratio: median seconds vs run's median")


if __name__ == "__main__":
    main()
