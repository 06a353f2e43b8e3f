"""CI: the SmolLM2 folder a torch-free venv prepared gives the same greedy tokens as the torch-prepared one.

    python .ci/mlx_only_check.py MLX_FOLDER TORCH_FOLDER

Runs in the main CI venv (it needs only mlx-lm). Each of 5 prompts, 4 of them through the chat template,
is continued greedily for 24 tokens by both folders (mlx-lm's own generation loop); any difference is
printed and the script exits 1. Also checks the two tokenizers encode each prompt identically.
"""

from __future__ import annotations

import sys

import mlx_steer  # noqa: F401  -- first: on Linux it gives MLX the optimized BLAS

PROMPTS = [
    ("chat", "Name three colours of the rainbow."),
    ("chat", "Write a haiku about the sea."),
    ("chat", "What is 17 + 25? Answer briefly."),
    ("chat", "Translate 'good morning' into French, Spanish and German."),
    ("plain", "def fibonacci(n):\n    "),
]
N_TOKENS = 24


def greedy(folder: str) -> tuple[list[list[int]], list[list[int]]]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tokenizer = load(folder)
    prompts, continuations = [], []
    for kind, text in PROMPTS:
        ids = (tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
               if kind == "chat" else tokenizer.encode(text))
        prompts.append(list(ids))
        continuations.append([int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=N_TOKENS)])
    return prompts, continuations


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mlx_only_check.py MLX_FOLDER TORCH_FOLDER", file=sys.stderr)
        return 2
    (p_mlx, c_mlx), (p_torch, c_torch) = greedy(argv[0]), greedy(argv[1])
    bad = 0
    for i, (kind, text) in enumerate(PROMPTS):
        same = p_mlx[i] == p_torch[i] and c_mlx[i] == c_torch[i]
        bad += not same
        print(f"{'same' if same else 'DIFFERENT'}: {kind} {text!r}: {len(p_mlx[i])} prompt tokens, "
              f"greedy {c_mlx[i][:8]}...")
        if not same:
            print(f"  prompt  mlx {p_mlx[i]}\n  prompt torch {p_torch[i]}\n  greedy  mlx {c_mlx[i]}\n"
                  f"  greedy torch {c_torch[i]}")
    print(f"{len(PROMPTS) - bad} of {len(PROMPTS)} prompts give the same greedy tokens")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
