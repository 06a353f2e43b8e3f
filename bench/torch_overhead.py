"""Cost of steering on the torch backend vs plain Hugging Face generate (and nnsight / steering-vectors).

One run, one table, on SmolLM2-135M-Instruct (fp32). Every variant generates the same number of
tokens greedily from the same prompt ids (EOS cannot be sampled: ``min_new_tokens`` for HF
``generate``, a ban-EOS logits processor for mlx_steer's own loop) and adds the same small vector
at the output of one middle decoder layer, small enough that the tokens stay those of the plain
run. Variants:

* ``plain HF generate``: ``model.generate(do_sample=False, disable_compile=True)``, the baseline;
* ``mlx_steer loop, no steering``: ``TorchSteerableModel.generate_tokens(interventions=None)``,
  our mlx-lm style token loop alone (separates the loop's cost from the hooks');
* ``mlx_steer loop, steer 1 layer``: the same with ``{layer: iv.add_vector(v, scale=...)}``
  (target: ratio >= 0.95, i.e. at most 5% slower than plain HF generate);
* ``mlx_steer steer() + HF generate``: a persistent ``steer()`` handle, HF's own loop;
* ``nnsight``: ``TransformersModel(hf_model).generate(...)`` with ``tracer.iter[:N]`` adding the
  vector to ``model.layers[i].output`` at every forward (on its own copy of the weights, since
  nnsight instruments the modules it wraps for good);
* ``steering-vectors``: ``SteeringVector({i: v}, "decoder_block").apply(model)`` around HF generate.

nnsight and steering-vectors are optional: a row says "not installed" (with the reason) when
they do not import. Runs are interleaved (every variant once, then again...) so drift on a shared
machine hits all alike; the table reports the median end-to-end tokens/s (new tokens / wall time
of the whole call, prefill included, hook installation included) and its ratio to plain.

    python bench/torch_overhead.py [--tokens 48] [--repeats 5] [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata as md
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
BASELINE = "plain HF generate"
TARGETS = {"mlx_steer loop, steer 1 layer": 0.95}
CHECK_SCALE = 100.0  # large enough that steering must change the tokens (proves it is applied)

Run = Callable[[int, float], list[int]]  # (new tokens, scale) -> generated token ids


@dataclass
class Variant:
    label: str
    run: Run | None = None
    steers: bool = True
    model: Any = None  # the HF module it runs (forwards are counted on it)
    note: str = ""
    version: str = ""
    tps: list[float] = field(default_factory=list)
    tokens: list[int] | None = None
    forwards: int | None = None


# -- machine ----------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    from machine import cpu_name  # bench/machine.py: this script's folder is on sys.path

    info = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": md.version("transformers"), "device": str(device),
    }
    if hasattr(os, "getloadavg"):  # taken before the models load: other work on the machine
        info["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def requirement_note(dist: str) -> str:
    """Say when an installed package declares a torch/transformers range that is not met here."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ""
    notes = []
    for spec in md.requires(dist) or []:
        req = Requirement(spec)
        if req.name in ("torch", "transformers") and not req.marker:
            have = md.version(req.name)
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                notes.append(f"declares {req.name}{req.specifier}, runs on {have} (installed --no-deps)")
    return "; ".join(notes)


# -- variants ---------------------------------------------------------------------------------
def build_variants(tm: Any, path: str, ids: list[int], layer: int, v: np.ndarray, device: torch.device) -> list[Variant]:
    from mlx_steer.engine import interventions as iv

    hf, tok = tm.model, tm.tokenizer
    P = len(ids)
    x = torch.tensor([ids], device=device)
    mask = torch.ones_like(x)
    vt = torch.from_numpy(v).to(device=device, dtype=tm.dtype)
    site = f"layers.{layer}"
    no_eos = [tm.ban_tokens_processor(sorted(tm.eos_token_ids))]

    def hf_kwargs(n: int) -> dict:
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(tm.eos_token_ids)
        return {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "disable_compile": True,
                "pad_token_id": pad}

    def plain(n: int, scale: float) -> list[int]:
        return hf.generate(x, attention_mask=mask, **hf_kwargs(n))[0, P:].tolist()

    def ours_plain(n: int, scale: float) -> list[int]:
        return tm.generate_tokens(ids, max_tokens=n, interventions=None, logits_processors=no_eos)

    def ours_steer(n: int, scale: float) -> list[int]:
        return tm.generate_tokens(ids, max_tokens=n, interventions={site: iv.add_vector(v, scale=scale)},
                                  logits_processors=no_eos)

    def handle_hf(n: int, scale: float) -> list[int]:
        with tm.steer({site: iv.add_vector(v, scale=scale)}):
            return plain(n, scale)

    variants = [
        Variant(BASELINE, plain, steers=False, model=hf, version=f"transformers {md.version('transformers')}"),
        Variant("mlx_steer loop, no steering", ours_plain, steers=False, model=hf),
        Variant("mlx_steer loop, steer 1 layer", ours_steer, model=hf),
        Variant("mlx_steer steer() + HF generate", handle_hf, model=hf),
    ]
    variants.append(nnsight_variant(path, tm, x, mask, P, layer, vt, hf_kwargs))
    variants.append(steering_vectors_variant(hf, plain, layer, vt))
    return variants


def nnsight_variant(path: str, tm: Any, x: torch.Tensor, mask: torch.Tensor, P: int, layer: int,
                    vt: torch.Tensor, hf_kwargs: Callable[[int], dict]) -> Variant:
    label = "nnsight generate + tracer.iter"
    try:
        import nnsight
        from nnsight import TransformersModel
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable here"
        return Variant(label, note=f"not installed: {type(e).__name__}: {e}")
    version = f"nnsight {md.version('nnsight')}"
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # its own copy: nnsight installs controllers on every module it wraps, permanently
        hf2 = AutoModelForCausalLM.from_pretrained(path, dtype=tm.dtype).eval().to(x.device)
        lm = TransformersModel(hf2, tokenizer=AutoTokenizer.from_pretrained(path))
        target = lm.model.layers[layer]
    except Exception as e:  # noqa: BLE001
        return Variant(label, version=version, note=f"failed to wrap the model: {type(e).__name__}: {e}")

    def run(n: int, scale: float) -> list[int]:
        delta = vt * scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", getattr(nnsight, "NNsightDeprecationWarning", FutureWarning))
            with lm.generate({"input_ids": x, "attention_mask": mask}, **hf_kwargs(n)) as tracer:
                for _ in tracer.iter[:n]:  # HF generate runs exactly n forwards for n new tokens
                    target.output = target.output + delta
                out = tracer.result.save()  # after the loop: reading it first would wait for the end
        return out[0, P:].tolist()

    return Variant(label, run, model=hf2, version=version, note="separate model copy")


def steering_vectors_variant(hf: Any, plain: Run, layer: int, vt: torch.Tensor) -> Variant:
    label = "steering-vectors apply + HF generate"
    try:
        from steering_vectors import SteeringVector
    except Exception as e:  # noqa: BLE001
        return Variant(label, note=f"not installed: {type(e).__name__}: {e}")

    def run(n: int, scale: float) -> list[int]:
        sv = SteeringVector(layer_activations={layer: vt * scale}, layer_type="decoder_block")
        with sv.apply(hf):
            return plain(n, scale)

    return Variant(label, run, model=hf, version=f"steering-vectors {md.version('steering-vectors')}",
                   note=requirement_note("steering-vectors"))


# -- measuring --------------------------------------------------------------------------------
def count_forwards(hf: Any, fn: Callable[[], Any]) -> tuple[Any, int]:
    n = 0

    def hook(*_: Any) -> None:
        nonlocal n
        n += 1

    h = hf.register_forward_pre_hook(hook)
    try:
        return fn(), n
    finally:
        h.remove()


def check(var: Variant, tokens: int, scale: float, plain_big: list[int] | None) -> None:
    """Warm up, record the tokens and forward count, and prove that steering is applied."""
    assert var.run is not None
    with torch.no_grad():
        var.run(4, scale)  # warm-up
        var.tokens, var.forwards = count_forwards(var.model, lambda: var.run(tokens, scale))
        if var.steers and plain_big is not None:
            big = var.run(8, CHECK_SCALE)
            if big == plain_big:
                raise RuntimeError(f"steering at scale {CHECK_SCALE} left the tokens unchanged: not applied")
    if len(var.tokens) != tokens:
        raise RuntimeError(f"generated {len(var.tokens)} tokens, expected {tokens}")


def timed(var: Variant, tokens: int, scale: float, device: torch.device) -> float:
    assert var.run is not None
    gc.collect()
    sync(device)
    t0 = time.perf_counter()
    out = var.run(tokens, scale)
    sync(device)
    dt = time.perf_counter() - t0
    if len(out) != tokens:
        raise RuntimeError(f"{var.label}: generated {len(out)} tokens, expected {tokens}")
    return tokens / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per call (default 48)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--scale", type=float, default=1.0, help="steering scale of a unit vector (default 1.0)")
    ap.add_argument("--layer", type=int, default=None, help="layer to steer (default: the middle one)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", metavar="PATH", help="also write machine info and rows as JSON")
    args = ap.parse_args()
    if args.tokens < 8 or args.repeats < 1:
        ap.error("--tokens must be >= 8 and --repeats >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    load0 = info.get("load_avg_1m_at_start", 0.0)
    if load0 > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load0:.1f} on {os.cpu_count()} cores at start; "
              "other processes will skew the timings", file=sys.stderr)
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")

    from transformers.utils import logging as hf_logging

    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.torch_backend import load

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t_start = time.time()
    path = str(prepare_smollm2(verbose=False))
    tm = load(path, device=device, dtype=torch.float32)
    layer = tm.num_layers // 2 if args.layer is None else args.layer
    ids = tm.encode(PROMPT, chat=True)
    rng = np.random.default_rng(0)
    v = rng.normal(size=tm.hidden_size).astype(np.float32)
    v /= np.linalg.norm(v)

    variants = build_variants(tm, path, ids, layer, v, device)
    plain_big = None
    for var in variants:
        if var.run is None:
            continue
        try:
            check(var, args.tokens, args.scale, plain_big)
        except Exception as e:  # a broken optional library must not sink the run
            var.run, var.note = None, f"failed: {type(e).__name__}: {e}".strip()
            if var.label == BASELINE:
                raise
        if var.label == BASELINE:
            with torch.no_grad():
                plain_big = var.run(8, CHECK_SCALE)

    live = [var for var in variants if var.run is not None]
    with torch.no_grad():
        for _ in range(args.repeats):
            for var in live:
                var.tps.append(timed(var, args.tokens, args.scale, device))

    base = variants[0]
    base_tps, base_best = statistics.median(base.tps), max(base.tps)
    rows = []
    for var in variants:
        row: dict[str, Any] = {"variant": var.label, "version": var.version, "note": var.note}
        if var.tps:
            med = statistics.median(var.tps)
            target = TARGETS.get(var.label)
            same = var.tokens == base.tokens
            row.update(
                tok_s=med, ratio=med / base_tps, best_tok_s=max(var.tps), best_ratio=max(var.tps) / base_best,
                tok_s_runs=var.tps, forwards=var.forwards,
                same_tokens_as_plain=same, target_ratio=target,
                target_met=None if target is None else med / base_tps >= target,
            )
            if not same:
                row["note"] = "; ".join(x for x in (var.note, "tokens differ from plain") if x)
        rows.append(row)

    elapsed = time.time() - t_start
    print(f"\nmachine: {info['cpu']} ({info['cpu_count']} cores, torch threads {info['torch_threads']})"
          + (f", GPU {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else "")
          + (f", load average at start {info['load_avg_1m_at_start']}" if "load_avg_1m_at_start" in info else "")
          + f"\npython {info['python']}, torch {info['torch']}, transformers {info['transformers']}, device {device}")
    print(f"SmolLM2-135M-Instruct fp32, prompt {len(ids)} tokens, {args.tokens} new tokens (greedy, EOS banned), "
          f"steer layers.{layer} output += {args.scale:g} * unit vector, {args.repeats} interleaved repeats, "
          f"median end-to-end tokens/s, {elapsed:.0f}s total")
    w = max(len(r["variant"]) for r in rows)
    print(f"{'variant':<{w}} {'tok/s':>7} {'ratio':>6} {'target':>7} {'met':>4} {'best':>7} {'ratio':>6} "
          f"{'fwds':>5} {'same tok':>8}  version / note")
    for r in rows:
        extra = " / ".join(x for x in (r["version"], r["note"]) if x)
        if "tok_s" not in r:
            print(f"{r['variant']:<{w}} {'-':>7} {'-':>6} {'':>7} {'':>4} {'-':>7} {'-':>6} {'':>5} {'':>8}  {extra}")
            continue
        tgt = f">={r['target_ratio']:.2f}" if r["target_ratio"] else ""
        met = "" if r["target_met"] is None else ("yes" if r["target_met"] else "NO")
        print(f"{r['variant']:<{w}} {r['tok_s']:7.2f} {r['ratio']:6.3f} {tgt:>7} {met:>4} {r['best_tok_s']:7.2f} "
              f"{r['best_ratio']:6.3f} {r['forwards']:>5} {'yes' if r['same_tokens_as_plain'] else 'NO':>8}  {extra}")
    by = {r["variant"]: r for r in rows}
    loop, steer = by.get("mlx_steer loop, no steering", {}), by.get("mlx_steer loop, steer 1 layer", {})
    if "tok_s" in loop and "tok_s" in steer:
        print(f"split: our loop vs HF generate {loop['tok_s'] / base_tps - 1:+.1%} tok/s; "
              f"adding the 1-layer hook {steer['tok_s'] / loop['tok_s'] - 1:+.1%} tok/s")
    slow = sum(t < 0.6 * max(var.tps) for var in live for t in var.tps)
    if slow:
        print(f"WARNING: {slow} of {sum(len(var.tps) for var in live)} runs were under 60% of their variant's best: "
              "other load disturbed this run; trust it only after a rerun on an idle machine")
    print("tok/s, ratio: medians (target checked on them); best, ratio: fastest run of each variant vs plain's fastest")
    print("fwds = model forwards per call (HF: prefill + n-1 decode steps; the mlx_steer loop prefills the "
          "prompt but its last token, then runs that token and n steps, mlx-lm style)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": {
                "model": "SmolLM2-135M-Instruct", "dtype": "float32", "prompt_tokens": len(ids),
                "new_tokens": args.tokens, "repeats": args.repeats, "layer": layer, "scale": args.scale,
                "argv": sys.argv[1:], "seconds": elapsed}, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
