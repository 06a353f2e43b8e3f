"""Run by 2-rank launches in test_distributed.py: ``python dist_worker.py MODE MODELS OUT_DIR``.

MODE ``all``: data-parallel extraction, recording and sweep on MODELS/llama, then greedy steered generation and
recording with MODELS/llama tensor-sharded and MODELS/qwen2 pipelined; each rank writes
OUT_DIR/<part>.<rank>.npz and the test compares every rank with a single-process run. MODE
``fail``: rank 1 exits with an error while rank 0 waits for it in an all-reduce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

POS = ["I love this wonderful day", "happy people walk in the sun", "This is great", "I love the sun and the rain",
       "The weather is great", "happy day", "I love this"]
NEG = ["I hate the rain", "This is terrible, awful and sad news", "sad news", "I hate this terrible day",
       "awful and sad", "terrible weather today, sad people", "I hate this"]
EXTRACTS = {  # name -> extract options
    "mean_last": dict(method="mean_diff", read="last", sites=["layers.1", "layers.3"]),
    "mean_mean": dict(method="mean_diff", read="mean", sites=["layers.2:input"]),
    "pca_last": dict(method="pca", read="last", sites=["layers.1", "layers.2"]),
    "unpaired": dict(method="mean_diff", read="last", sites=["layers.1"], pos=POS[:3], neg=NEG),
}
PROMPT = "I love the"
STEER_SITES = ("layers.1", "layers.2")


def extract_all(m, group=None) -> dict[str, np.ndarray]:
    import mlx_steer as ms

    out = {}
    for name, opts in EXTRACTS.items():
        opts = dict(opts)
        pos, neg = opts.pop("pos", POS), opts.pop("neg", NEG)
        vec = ms.extract(m, pos, neg, batch_size=2, progress=False, group=group, **opts)
        for site in vec:
            out[f"{name}/{site}"] = vec[site]
        out[f"{name}/world_size"] = np.array(int(vec.extra.get("world_size", "1")))
    return out


def record_all(m, group=None) -> dict[str, np.ndarray]:
    """Data-parallel recording over POS + NEG: every row, and the mean over the prompts."""
    import mlx_steer as ms

    rows = ms.record_dataset(m, POS + NEG, sites=["layers.1", "layers.2:input"], batch_size=2, progress=False,
                             group=group)
    mean = ms.record_dataset(m, POS + NEG, sites=["layers.3"], read="mean", reduce="mean", batch_size=3,
                             progress=False, group=group)
    return {f"record/{k}": v for k, v in {**rows, **mean}.items()}


def sweep_all(m) -> dict[str, np.ndarray]:
    """A 2-layer x 3-strength sweep (cells shared over the ranks)."""
    from mlx_steer.analysis import sweep

    v = np.random.default_rng(1).standard_normal(m.hidden_size).astype(np.float32)
    r = sweep(m, vector=v, layers=[1, 2], strengths=[-2.0, 1.0, 3.0], prompts=POS[:3], target_tokens=[5],
              contrast_tokens=[6], batch_size=6, progress=False)
    return {"sweep/behaviour": r.grid("behaviour"), "sweep/kl": r.grid("kl")}


def steer_all(m) -> dict[str, np.ndarray]:
    """Greedy steered generations at each site (and one batch), plus a recorded block output."""
    import mlx_steer as ms

    rng = np.random.default_rng(0)
    out = {}
    for site in STEER_SITES:
        v = rng.standard_normal(m.hidden_size).astype(np.float32) * 4
        out[f"gen/{site}"] = np.array(m.generate_tokens(PROMPT, max_tokens=8, interventions={site: ms.interventions.add_vector(v)}))
    out["gen/none"] = np.array(m.generate_tokens(PROMPT, max_tokens=8))
    v = rng.standard_normal(m.hidden_size).astype(np.float32) * 4
    tr = m.run([PROMPT, "happy people"], interventions={"layers.1": ms.interventions.add_vector(v)}, record=["layers.0", "layers.3"])
    real = (np.arange(max(tr.lengths))[None, :] >= np.array(tr.padding)[:, None])[..., None]
    for k in ("layers.0", "layers.3"):  # padding positions are computed and thrown away: zero them
        out[f"rec/{k}"] = np.where(real, m.to_numpy(tr.activations[k]), 0)
    out["logits"] = np.where(real, m.to_numpy(tr.logits), 0)
    # recorded while generating: the call's own recorders, and hooks installed around the call
    calls: list = []
    m.generate_tokens(PROMPT, max_tokens=4, record=["layers.0", "layers.3"], hooks_out=calls)
    with m.record(["layers.0", "layers.3"], positions="all") as around:
        m.generate_tokens(PROMPT, max_tokens=3)
    for k in ("layers.0", "layers.3"):
        out[f"grec/call/{k}"] = m.to_numpy(calls[0].activations[k])
        out[f"grec/around/{k}"] = m.to_numpy(around.activations[k])
    try:
        m.run([PROMPT], record=["layers.1.self_attn.o_proj:input"])
        out["refused"] = np.array("")
    except ValueError as exc:
        out["refused"] = np.array(str(exc))
    return out


def main(mode: str, model_dir: str, out_dir: str) -> None:
    if mode == "torch":  # under torchrun: data-parallel extraction on the torch backend
        import torch.distributed as dist

        import mlx_steer.torch_backend as mt

        m = mt.load(model_dir)
        result = {**extract_all(m), **record_all(m)}  # they find the torchrun group themselves
        np.savez(Path(out_dir) / f"torch.{dist.get_rank()}.npz", **result)
        dist.destroy_process_group()
        return
    import mlx.core as mx

    import mlx_steer as ms

    rank = mx.distributed.init().rank()
    if mode == "fail":
        if rank == 1:
            raise SystemExit("rank 1 failed on purpose")
        mx.eval(mx.distributed.all_sum(mx.array(1.0), stream=mx.cpu))  # waits for rank 1 forever
        return
    root, out = Path(model_dir), Path(out_dir)
    whole = ms.load(str(root / "llama"))
    np.savez(out / f"extract.{rank}.npz", **extract_all(whole), **record_all(whole), **sweep_all(whole))
    for part, arch in (("tensor", "llama"), ("pipeline", "qwen2")):
        np.savez(out / f"{part}.{rank}.npz", **steer_all(ms.load(str(root / arch), distributed=part)))
    # the command line under the launcher: rank 0 alone writes -o and prints
    from mlx_steer.cli import main as cli

    pairs = out / "pairs.jsonl"
    if rank == 0:
        pairs.write_text("".join(json.dumps({"positive": p, "negative": n}) + "\n" for p, n in zip(POS, NEG)))
        (out / "prompts.txt").write_text("\n".join(POS + NEG) + "\n")
    mx.eval(mx.distributed.all_sum(mx.array(1.0), stream=mx.cpu))  # the file is there for rank 1
    code = cli(["extract", str(pairs), "--model", str(root / "llama"), "--layers", "1", "2", "--batch-size", "2",
                "--no-progress", "-o", str(out / "cli.safetensors")])
    (out / f"cli.{rank}.code").write_text(str(code))
    code = cli(["record", str(out / "prompts.txt"), "--model", str(root / "llama"), "--sites", "layers.2:input",
                "--batch-size", "3", "--no-progress", "-o", str(out / "acts.safetensors")])
    (out / f"cli_record.{rank}.code").write_text(str(code))
    code = cli(["sweep", "--model", str(root / "llama"), "--vector", str(out / "cli.safetensors"), "--strengths", "0",
                "2", "-3", "--target-tokens", "5", "--contrast-tokens", "6", "--prompts-file", str(out / "prompts.txt"),
                "--png", str(out / "sweep.png")])
    (out / f"cli_sweep.{rank}.code").write_text(str(code))


if __name__ == "__main__":
    main(*sys.argv[1:4])
