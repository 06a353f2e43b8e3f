"""``mlx-steer extract``: contrast prompts -> a vector file (.safetensors, or a GGUF control vector)."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from typing import Any

from .arguments import add_method_options, add_model, add_output, add_reading, check_chat, usage_error
from .inputs import check_output, contrast_prompts
from .loading import describe, model_for

SUMMARY = "extract a steering vector from contrast prompts into a vector file"
WEAK_RATIO = 0.05  # vector norm / read norm below which the default --strength 4 adds under a fifth of the stream
DEFAULT_STRENGTH = 4.0  # generate's default --strength
OPTION_GROUPS = ("backend", "encode")
EXAMPLES = """\
input formats:
  JSONL   {"positive": "I love it", "negative": "I hate it"}   one pair per line
          (a .json file holding a list of such objects works too)
  CSV     a header naming positive,negative, then one pair per row (.tsv: tab-separated)
  text    --positive-file pos.txt --negative-file neg.txt, one prompt per line

Start with --read mean (each prompt's mean over its tokens, as the demo does); the default reads the
last token alone, which depends on how each prompt ends. extract then prints each site's vector norm
next to the mean norm of the activations read, with a hint when it looks too weak to steer.

examples:
  mlx-steer extract pairs.jsonl --model mlx-community/Llama-3.2-1B-Instruct-4bit \\
      --layers 6 8 --read mean -o happy.safetensors
  mlx-steer extract pairs.csv --model ./my-model --sites layers.10 --method pca --read mean -o v.safetensors
  mlx-steer extract --positive-file pos.txt --negative-file neg.txt --model ./my-model \\
      --layers 12 --chat --read assistant_start --assistant-prefix "Sure," -o v.safetensors
  mlx-steer --backend torch extract pairs.jsonl --model ./hf-folder --layers 6 -o v.safetensors"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``extract`` options to its subparser."""
    sp.add_argument("pairs", nargs="?", metavar="PAIRS",
                    help='JSONL ({"positive": "...", "negative": "..."} per line) or CSV (columns positive,negative)')
    sp.add_argument("--positive-file", metavar="FILE", help="positive prompts, one per line (with --negative-file)")
    sp.add_argument("--negative-file", metavar="FILE", help="negative prompts, one per line")
    sp.add_argument("--positive", action="append", metavar="TEXT", default=[], help=argparse.SUPPRESS)
    sp.add_argument("--negative", action="append", metavar="TEXT", default=[], help=argparse.SUPPRESS)
    add_output(sp, "-o", "--output", required=True,
               help="vector file to write: .safetensors, or .gguf for a llama.cpp / repeng control vector")
    add_model(sp)
    add_method_options(sp)
    add_reading(sp)


def run(args: argparse.Namespace) -> int:
    """``mlx-steer extract``: contrast prompts -> vector file."""
    from ..distributed.group import launched_group
    from ..extraction.directions import extract_with_norms
    from ..vectors.vector_file import save_vector

    check_chat(args)
    out = check_output(args.output, force=args.force)
    gguf = out.suffix.lower() == ".gguf"
    if gguf and importlib.util.find_spec("gguf") is None:
        raise ImportError("a .gguf output needs the gguf package: pip install gguf (or write .safetensors)")
    if gguf and args.method == "actadd":
        raise ValueError(f"{args.output}: a GGUF control vector holds one (D,) direction per layer; "
                         f"actadd makes a per-position tensor (write .safetensors)")
    contrast = contrast_prompts(args, args.pairs)
    if contrast is None:
        usage_error(args, "give a PAIRS file, --positive-file/--negative-file, or --positive/--negative")
    sites = args.sites or [f"layers.{n}" for n in args.layers]
    model = model_for(args)
    if gguf:
        _check_gguf_sites(model, sites, args.output)
    group = launched_group(model)  # under mlx.launch / torchrun: ranks share the prompts
    vec, read_norms = extract_with_norms(model, *contrast, sites=sites, method=args.method, read=args.read, batch_size=args.batch_size,
                  chat=args.chat, system=args.system, assistant_prefix=args.assistant_prefix,
                  progress=args.progress, group=group)
    if group is not None and group.rank != 0:
        return 0  # rank 0 alone writes and prints
    if gguf:
        save_vector(vec, out, model_hint=_model_type(model), layer_path_template=_layer_template(model))
    else:
        save_vector(vec, out)
    ranks = f" on {group.size} ranks" if group is not None else ""
    print(f"wrote {out}: {describe(vec)}; from {len(contrast[0])} positive and {len(contrast[1])} negative "
          f"prompts{ranks}")
    for line in strength_report(vec.norms(), read_norms, read=args.read):
        print(line)
    return 0


def strength_report(vector_norms: dict[str, float], read_norms: dict[str, float] | None, *, read: object) -> list[str]:
    """Per site, the vector's norm over the mean norm of the activations it was read from (a strength s
    adds s times that fraction of the stream), and a hint when that is too small to steer at the default
    strength. Nothing when the read norms are unknown (actadd, several ranks)."""
    if read_norms is None:
        return []
    from ..vectors.similarity import norm_ratios

    ratios = norm_ratios(vector_norms, read_norms)
    w = max(map(len, ratios))
    lines = ["norm next to the activations read (vector / their mean norm; strength s adds s x this):"]
    lines += [f"  {site:<{w}}  {ratios[site]:.3g}  ({vector_norms[site]:.4g} / {read_norms[site]:.4g})"
              for site in ratios]
    weak = [site for site, r in ratios.items() if r < WEAK_RATIO]
    if weak:
        tries = "--read mean, " if read != "mean" else ""
        lines.append(f"hint: likely too weak at {', '.join(weak)}: under {WEAK_RATIO:g} of the stream's norm, so "
                     f"--strength {DEFAULT_STRENGTH:g} adds under {WEAK_RATIO * DEFAULT_STRENGTH:g} of it; try "
                     f"{tries}more or sharper pairs, or a larger --strength")
    return lines


def _check_gguf_sites(model: Any, sites: Sequence[str], output: str) -> None:
    """Before extracting: a GGUF control vector holds decoder-layer outputs 1.. only (llama.cpp)."""
    layers = list(model.layer_paths)
    for text in sites:
        site = model.resolve(text)
        if site.point != "output" or site.path not in layers[1:]:
            raise ValueError(f"{output}: a GGUF control vector steers decoder-layer outputs 1..{len(layers) - 1} "
                             f"(llama.cpp never steers layer 0); {text} is not one (write .safetensors)")


def _model_type(model: Any) -> str | None:
    """The model's architecture name (``llama``, ``qwen2``...), GGUF's model hint."""
    inner = getattr(model, "model", None)
    for holder in (getattr(inner, "args", None), getattr(inner, "config", None), inner):
        value = getattr(holder, "model_type", None)
        if isinstance(value, str) and value:
            return value
    return None


def _layer_template(model: Any) -> str:
    """``model.layers.{}`` (or the model's own layer container) for GGUF's ``direction.N``."""
    return model.layer_paths[0].rsplit(".", 1)[0] + ".{}"
