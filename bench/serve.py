"""``mlx-steer serve`` under load, on SmolLM2-135M-Instruct: 8 concurrent streaming clients on
loopback, every request steered by a different vector vs none steered (aggregate tokens/s, time
to first token and latency p50/p95), and the same 8 requests one after another.

    python bench/serve.py [--backend mlx|torch] [--max-tokens 32] [--repeats 2] [--json out.json]

The server runs as its own process (``python -m mlx_steer.serve``); each variant sends the same 8
chat prompts with ``ignore_eos`` so every request generates exactly ``--max-tokens`` tokens, and
the variants run interleaved (none, all, sequential, none, all, ...) so their ratios come from one
run. Nothing is downloaded: the model is prepared offline by ``prepare_smollm2``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

PROMPTS = ["Tell me about your day.", "What do you think of the weather?", "Describe your neighbour.",
           "Write a short note to a friend.", "What is your favourite food?", "How was the movie?",
           "Give me advice about work.", "What do you see outside the window?"]
CLIENTS = len(PROMPTS)
LAYERS = (6, 8, 10, 12, 14, 16, 18, 20)  # one vector per client, each at its own layer


def write_vectors(model_dir: Path, folder: Path) -> list[str]:
    """Eight seeded random directions (norm 1, scaled per request), one file each."""
    import mlx_steer as ms

    config = json.loads((model_dir / "config.json").read_text())
    D, rng = config["hidden_size"], np.random.default_rng(0)
    names = []
    for i, layer in enumerate(LAYERS):
        d = rng.normal(size=D)
        ms.save_vector(ms.SteeringVector({f"model.layers.{layer}": d / np.linalg.norm(d)}, method="random"),
                       folder / f"v{i}.safetensors")
        names.append(f"v{i}")
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_dir: Path, vectors: Path, backend: str, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_steer.serve", "--model", str(model_dir), "--vectors-dir",
                             str(vectors), "--port", str(port), "--backend", backend, "--log-level", "warning"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text()}")


async def one_request(http, url: str, model: str, prompt: str, steering: list | None, max_tokens: int) -> dict:
    """One streaming chat request: time to first token, latency, tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True, "return_token_ids": True}
    if steering:
        body["steering"] = steering
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            ids = json.loads(line[5:])["choices"][0].get("token_ids")
            if ids:
                tokens += len(ids)
                first = first or time.perf_counter() - t0
    return {"ttft": first, "latency": time.perf_counter() - t0, "tokens": tokens}


async def wave(url: str, model: str, names: list[str] | None, max_tokens: int, *, concurrent: bool,
               scale: float) -> dict:
    """The 8 prompts at once (or one after another); ``names``: one vector per request, or None."""
    import httpx

    def steering(i: int) -> list | None:
        return None if names is None else [{"vector": names[i], "scale": scale}]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=CLIENTS)) as http:
        t0 = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(one_request(http, url, model, p, steering(i), max_tokens)
                                             for i, p in enumerate(PROMPTS)))
        else:
            results = [await one_request(http, url, model, p, steering(i), max_tokens) for i, p in enumerate(PROMPTS)]
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    assert tokens == CLIENTS * max_tokens, f"expected {CLIENTS * max_tokens} tokens, got {tokens}"
    return {"wall": wall, "tokens": tokens, "ttft": [r["ttft"] for r in results],
            "latency": [r["latency"] for r in results]}


def summarize(waves: list[dict]) -> dict:
    """Aggregate tok/s as the median over repeats; TTFT and latency percentiles over every request."""
    ttft = np.concatenate([w["ttft"] for w in waves])
    lat = np.concatenate([w["latency"] for w in waves])
    return {"tok_s": float(np.median([w["tokens"] / w["wall"] for w in waves])),
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95)),
            "lat_p50": float(np.percentile(lat, 50)), "lat_p95": float(np.percentile(lat, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("mlx", "torch"), default="mlx")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from machine import cpu_name

    from mlx_steer.demo.real_model import prepare_smollm2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = Path(prepare_smollm2(cache_dir=os.environ.get("MLX_STEER_CACHE") or None, verbose=False))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        names = write_vectors(model_dir, Path(tmp))
        proc, url = start_server(model_dir, Path(tmp), args.backend, Path(tmp) / "server.log")
        try:
            model = str(model_dir)
            asyncio.run(wave(url, model, None, 4, concurrent=True, scale=args.scale))  # warm-up
            variants = {"8 concurrent, none steered": (None, True), "8 concurrent, each steered by its own vector": (names, True),
                        "8 sequential, none steered": (None, False)}
            waves: dict[str, list] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for label, (vecs, concurrent) in variants.items():
                    waves[label].append(asyncio.run(wave(url, model, vecs, args.max_tokens, concurrent=concurrent,
                                                         scale=args.scale)))
        finally:
            proc.terminate()
            proc.wait(30)
    stats = {k: summarize(v) for k, v in waves.items()}
    none, steered, seq = (stats[k] for k in variants)
    rows = []
    for label, s in stats.items():
        rows.append({"variant": label, **{k: round(v, 3) for k, v in s.items()}})
    ratio_steer = steered["tok_s"] / none["tok_s"]
    ratio_batch = none["tok_s"] / seq["tok_s"]
    print(f"\nmlx-steer serve, SmolLM2-135M-Instruct ({args.backend}), {CLIENTS} clients x {args.max_tokens} tokens, "
          f"{args.repeats} repeats, {time.perf_counter() - started:.0f} s; {cpu_name()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}\n")
    print("| variant | aggregate tok/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['tok_s']:.2f} | {r['ttft_p50']:.2f} s | {r['ttft_p95']:.2f} s | "
              f"{r['lat_p50']:.2f} s | {r['lat_p95']:.2f} s |")
    print(f"\nall steered / none steered: {ratio_steer:.3f} (target >= 0.9: {'met' if ratio_steer >= 0.9 else 'NOT met'})")
    print(f"8 concurrent / 8 sequential (aggregate tok/s): {ratio_batch:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "steered_over_plain": ratio_steer,
                                         "concurrent_over_sequential": ratio_batch}, indent=2))


if __name__ == "__main__":
    main()
