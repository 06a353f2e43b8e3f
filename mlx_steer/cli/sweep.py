"""``mlx-steer sweep``: the layers x strengths table (and heatmap) of :func:`mlx_steer.analysis.sweep`."""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Sequence
from typing import Any

from .arguments import add_model, add_output, finite, layer, positive_int, usage_error
from .calibrate import add_calibrated_flag, in_calibrated_units
from .inputs import check_output, contrast_prompts, read_prompts
from .loading import NonFiniteError, describe, fit_vector, model_for, vector_file

DEFAULT_PROMPTS = (
    "I think that",
    "The weather today is",
    "My neighbour told me that",
    "Yesterday at work, I",
    "In my opinion, the movie was",
    "When I look at the world, I feel",
)
DEFAULT_STRENGTHS = (-8.0, -4.0, 0.0, 4.0, 8.0)

SUMMARY = "tabulate steering effect and fluency cost over layers x strengths"
OPTION_GROUPS = ("backend", "pairs")
EXAMPLES = """\
Steers one layer at a time at each strength over neutral prompts and reports, per cell, the logit
difference (mean target-token logit - mean contrast-token logit, at each prompt's last token) and the
fluency cost KL(unsteered || steered) averaged over every prompt position.

examples:
  mlx-steer sweep --model ./my-model --vector happy.safetensors \\
      --target-tokens " happy" " great" --contrast-tokens " sad" " awful"
  mlx-steer sweep --model ./my-model --positive "I love it" --negative "I hate it" --layers 4 6 8 10 \\
      --strengths 0 2 4 8 --target-tokens " love" --contrast-tokens " hate" --png sweep.png"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``sweep`` options to its subparser."""
    add_model(sp)
    sp.add_argument("--vector", metavar="FILE", help="vector file with a direction per layer (or one for all); "
                    "or a hub repo ORG/NAME[@REV][:VECTOR]")
    sp.add_argument("--layers", nargs="+", type=layer, metavar="N",
                    help="layers (or site paths) to steer, one at a time (default: the vector's sites)")
    sp.add_argument("--strengths", "--strength", dest="strengths", nargs="+", type=finite,
                    default=list(DEFAULT_STRENGTHS), metavar="S", help="scales (default -8 -4 0 4 8)")
    add_calibrated_flag(sp)
    sp.add_argument("--target-tokens", nargs="+", required=True, metavar="TOKEN",
                    help='tokens the steering should raise (each one token; mind the leading space: " happy"; '
                         'integers are token ids)')
    sp.add_argument("--contrast-tokens", nargs="+", required=True, metavar="TOKEN",
                    help="tokens it should lower; the metric is mean target logit - mean contrast logit")
    sp.add_argument("--prompts-file", metavar="FILE", help="neutral prompts, one per line (default: six built-in)")
    sp.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="prompts per forward pass (default 16)")
    add_output(sp, "--png", help="also write behaviour and KL heatmaps to this PNG (needs matplotlib)")
    sp.add_argument("--chat", action="store_true", help="wrap the neutral prompts with the chat template")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer sweep``: the layers x strengths table (and heatmap) of :func:`analysis.sweep`."""
    from ..analysis import sweep
    from ..distributed.group import launched_group

    contrast = contrast_prompts(args, args.pairs)
    if args.vector and contrast:
        usage_error(args, "give --vector or contrast prompts, not both")
    if not (args.vector or contrast):
        usage_error(args, "give --vector FILE, or --positive TEXT --negative TEXT with --layers N ...")
    if contrast and not args.layers:
        usage_error(args, "sweeping a vector made from contrast prompts needs --layers N ...")
    if args.png:
        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("--png needs matplotlib: pip install matplotlib (or drop --png)")
        check_output(args.png, force=args.force)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else list(DEFAULT_PROMPTS)
    vec = vector_file(args) if args.vector else None
    model = model_for(args)
    sites = [f"layers.{x}" if isinstance(x, int) else x for x in args.layers] if args.layers else None
    vec = fit_vector(args, model, vec, contrast, sites if contrast else None)
    layers = args.layers or _layer_indices(model, vec.sites)
    vec = in_calibrated_units(args, model, vec, layers)
    group = launched_group(model)  # under mlx.launch / torchrun: ranks share the cells
    result = sweep(model, vector=vec, layers=layers, strengths=args.strengths, prompts=prompts,
                   target_tokens=_tokens(args.target_tokens), contrast_tokens=_tokens(args.contrast_tokens),
                   batch_size=args.batch_size, chat=args.chat, group=group)
    bad = [r for r in result.table if not (math.isfinite(r.behaviour) and math.isfinite(r.kl))]
    if group is not None and group.rank != 0:
        return 2 if bad else 0  # rank 0 alone prints and writes
    ranks = f"; on {group.size} ranks" if group is not None else ""
    print(f"sweep: {describe(vec)}; {len(prompts)} prompts; "
          f"target {args.target_tokens} vs contrast {args.contrast_tokens}{ranks}")
    print(result.to_text())
    if bad:
        cells = ", ".join(f"layer {r.layer} strength {r.strength:g}" for r in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise NonFiniteError(f"{len(bad)} cells are NaN/inf ({cells}): the model's logits are not finite there "
                             f"(a strength it overflows at, or broken weights)")
    if args.png:
        print(f"wrote {result.heatmap(args.png)}")
    return 0


def _tokens(items: list[str]) -> list[str | int]:
    return [int(t) if t.isdigit() else t for t in items]


def _layer_indices(model: Any, sites: Sequence[str]) -> list[int | str]:
    """Decoder-layer sites as their index (``model.layers.6`` -> 6); other sites as paths."""
    index = {p: i for i, p in enumerate(model.layer_paths)}
    return [index.get(s, s) for s in sites]
