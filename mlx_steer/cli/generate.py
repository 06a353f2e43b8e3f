"""``mlx-steer generate``: the unsteered continuation, then one per strength, streamed side by side."""

from __future__ import annotations

import argparse
from typing import Any

from .calibrate import add_calibrated_flag, in_calibrated_units
from .arguments import (add_model, check_chat, finite, non_negative, non_negative_int, positive, positive_int,
                        probability, seed, site, usage_error)
from .inputs import contrast_prompts
from .loading import NonFiniteError, describe, fit_vector, model_for, vector_file

SUMMARY = "print unsteered and steered continuations side by side"
OPTION_GROUPS = ("backend", "pairs", "encode")
EXAMPLES = """\
Prints, for each prompt, the unsteered continuation and then one per strength, each as it streams.
Every continuation starts from the same seed, so they differ only by the steering.

examples:
  mlx-steer generate "I think that" --model ./my-model --vector happy.safetensors --strength 4 8
  mlx-steer generate "I went up to my friend and said" --model ./my-model \\
      --positive "Love" --negative "Hate" --layer 6 --method actadd --strength 5 10
  mlx-steer generate "Tell me about your day." --model ./my-model --vector happy.safetensors \\
      --chat --temp 0.7 --top-p 0.9 --seed 1 --max-tokens 80"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``generate`` options to its subparser."""
    sp.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt(s) to continue")
    add_model(sp)
    sp.add_argument("--vector", metavar="FILE", help="vector file to steer with (all its sites, or --layer's); "
                    "or a hub repo ORG/NAME[@REV][:VECTOR]")
    sp.add_argument("--layer", type=site, metavar="N|SITE",
                    help="where to steer: the site extracted on the fly, or the one site of --vector to use")
    sp.add_argument("--strength", "--strengths", dest="strengths", nargs="+", type=finite, default=[4.0],
                    metavar="S", help="scale(s) of the vector; one steered continuation each (default 4)")
    add_calibrated_flag(sp)
    g = sp.add_argument_group("sampling (mlx-lm's options; default greedy)")
    g.add_argument("--max-tokens", type=positive_int, default=40, help="tokens per continuation (default 40)")
    g.add_argument("--temp", type=non_negative, default=0.0, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-p", type=probability, default=0.0, help="nucleus sampling mass (0 = off)")
    g.add_argument("--min-p", type=probability, default=0.0, help="min-p sampling threshold (0 = off)")
    g.add_argument("--top-k", type=non_negative_int, default=0, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--repetition-penalty", type=positive, default=None, help="e.g. 1.2 (default off)")
    g.add_argument("--seed", type=seed, default=None, help="random seed (0..2**64-1), reset before every continuation")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer generate``: the unsteered continuation, then one per strength, streamed."""
    check_chat(args)
    contrast = contrast_prompts(args, args.pairs)
    if args.vector and contrast:
        usage_error(args, "give --vector or contrast prompts, not both")
    if contrast and not args.layer:
        usage_error(args, "steering from contrast prompts needs --layer N (where to read and steer)")
    if not (args.vector or contrast):
        usage_error(args, "give --vector FILE, or --positive TEXT --negative TEXT --layer N")
    vec = vector_file(args) if args.vector else None
    model = model_for(args)
    vec = fit_vector(args, model, vec, contrast, [args.layer] if args.layer else None)
    vec = in_calibrated_units(args, model, vec, None)
    source = f"{len(contrast[0])} positive / {len(contrast[1])} negative prompts" if contrast else args.vector
    print(f"steering: {describe(vec)}; from {source}")
    gen = dict(max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p, min_p=args.min_p, top_k=args.top_k,
               repetition_penalty=args.repetition_penalty, seed=args.seed)
    runs = [("unsteered", None)] + [(f"{s:+g}", vec.to_interventions(scale=s)) for s in args.strengths]
    width = max(len(label) for label, _ in runs) + 3  # "[label] "
    for prompt in args.prompts:
        ids = model.encode(prompt, chat=args.chat, system=args.system, assistant_prefix=args.assistant_prefix)
        print(f"\n=== {prompt!r}")
        for label, spec in runs:
            _stream(model, ids, f"[{label}] ".ljust(width), gen, spec)
    return 0


def _stream(model: Any, ids: list[int], label: str, gen: dict, spec: Any) -> None:
    """Print one continuation as it streams, after ``label``; later lines are indented under it.

    Raises:
        NonFiniteError: the logits a token was sampled from hold NaN or are all infinite.
    """
    indent = "\n" + " " * len(label)
    print(label, end="", flush=True)
    stream = model.stream_generate(ids, interventions=spec, **gen)
    try:
        for r in stream:
            print(r.text.replace("\n", indent), end="", flush=True)
    except ValueError as exc:  # the library stops at non-finite logits
        print()
        raise NonFiniteError(f"under {label.strip()}: {exc} (--strength)") from None
    print()
