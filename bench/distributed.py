"""Data-parallel extraction on SmolLM2: 256 contrast pairs, one process vs 2 ring ranks on this
machine (started by ``python -m mlx_steer.distributed.launch``, which starts local ranks without
mlx.launch's busy output loop), and the bytes each rank all-reduces.

    python bench/distributed.py [--pairs 256] [--repeats 1] [--json out.json]

Each run loads the model, warms up on a few pairs, then times ``extract`` (mean_diff, last token,
3 layers) over every pair; under the launcher the time is rank 0's, which ends with the all-reduce,
so it includes waiting for the slower rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SITES = ["layers.10", "layers.15", "layers.20"]
SUBJECTS = ["the movie", "my new job", "the weather", "this city", "the food here", "our trip", "the book",
            "my neighbour", "the concert", "this game", "the hotel", "the class", "my phone", "the park",
            "the meeting", "dinner tonight"]
GOOD = ["I really love {}.", "Honestly, {} made me so happy today.", "{} is wonderful and I feel great about it.",
        "What a delight {} turned out to be!", "Everyone agrees {} was fantastic.", "I am thrilled with {}.",
        "{} brightened my whole week, and I would gladly do it all again tomorrow.",
        "Great news: {} went better than I ever hoped."]
BAD = ["I really hate {}.", "Honestly, {} made me so sad today.", "{} is awful and I feel terrible about it.",
       "What a disaster {} turned out to be!", "Everyone agrees {} was dreadful.", "I am furious with {}.",
       "{} ruined my whole week, and I would never want to go through it again.",
       "Bad news: {} went worse than I ever feared."]


def pairs(n: int) -> tuple[list[str], list[str]]:
    """``n`` contrast pairs of varied length (same template index on both sides)."""
    pos, neg = [], []
    for i in range(n):
        s, t = SUBJECTS[i % len(SUBJECTS)], (i // len(SUBJECTS)) % len(GOOD)
        pos.append(GOOD[t].format(s).capitalize())
        neg.append(BAD[t].format(s).capitalize())
    return pos, neg


def worker(n: int, repeats: int, method: str) -> None:
    """One rank (or the single process): time extraction, print one JSON line (rank 0)."""
    import mlx_steer as ms
    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.distributed import launched_group

    model = ms.load(str(prepare_smollm2(verbose=False)))
    group = launched_group(model)
    pos, neg = pairs(n)
    ms.extract(model, pos[:4], neg[:4], sites=SITES, method=method, progress=False, group=group)  # warm-up
    times, sent = [], 0
    for _ in range(repeats):
        before = group.bytes_reduced if group is not None else 0
        t0 = time.perf_counter()
        vec = ms.extract(model, pos, neg, sites=SITES, method=method, progress=False, group=group)
        times.append(time.perf_counter() - t0)
        sent = (group.bytes_reduced - before) if group is not None else 0
    if group is None or group.rank == 0:
        print("RESULT " + json.dumps({"ranks": group.size if group else 1, "method": method, "seconds": min(times),
                                      "bytes": sent, "norm": float(sum(vec.norms().values()))}), flush=True)


def run(ranks: int, n: int, repeats: int, method: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--pairs", str(n), "--repeats", str(repeats), "--method", method]
    if ranks > 1:
        cmd = [sys.executable, "-m", "mlx_steer.distributed.launch", "--timeout", "1500",
               "--backend", "ring", "-n", str(ranks), "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--method", default="mean_diff", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.pairs, args.repeats, args.method)
        return
    from machine import cpu_name

    rows = [run(r, args.pairs, args.repeats, "mean_diff") for r in (1, 2)]
    # what is sent does not depend on the number of prompts: pca's bytes from a small run
    rows.append(run(2, 16, 1, "pca") | {"seconds": None, "pairs": 16})
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; sites {' '.join(SITES)}; best of {args.repeats}")
    print("| method | pairs | ranks | extraction (s) | speed-up | bytes all-reduced per rank |")
    print("|---|---|---|---|---|---|")
    base = rows[0]["seconds"]
    for r in rows:
        t = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
        up = "—" if r["seconds"] is None else f"{base / r['seconds']:.2f}×"
        print(f"| {r['method']} | {r.get('pairs', args.pairs)} | {r['ranks']} | {t} | {up} | {r['bytes']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
