"""``mlx-steer record``: a prompt file -> activations at some sites, in a safetensors file."""

from __future__ import annotations

import argparse

from .arguments import add_model, add_output, add_read_option, add_reading, check_chat
from .inputs import check_output, read_prompts
from .loading import model_for

SUMMARY = "record activations at some sites over a file of prompts into a safetensors file"
OPTION_GROUPS = ("backend", "encode")
EXAMPLES = """\
Reads one row per prompt (its last token by default) at each site and writes them, in prompt order, as
one float32 tensor per site (named like model.layers.6, or model.layers.6:input); --mean writes the mean
over the prompts instead. Under mlx.launch / torchrun the ranks share the prompts and rank 0 writes.

examples:
  mlx-steer record prompts.txt --model ./my-model --layers 6 8 -o acts.safetensors
  mlx-steer record prompts.txt --model ./my-model --sites layers.10:input --read mean --mean -o mean.safetensors
  python -m mlx_steer.distributed.launch --backend ring -n 2 -- \\
      mlx-steer record prompts.txt --model ./my-model --layers 12 -o acts.safetensors"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``record`` options to its subparser."""
    sp.add_argument("prompts_file", metavar="PROMPTS", help="text file, one prompt per line")
    add_output(sp, "-o", "--output", required=True,
               help="safetensors file to write: one (prompts, hidden) tensor per site, or (hidden,) with --mean")
    add_model(sp)
    add_read_option(sp)
    sp.add_argument("--mean", action="store_true", help="write the mean over the prompts instead of every row")
    add_reading(sp)


def run(args: argparse.Namespace) -> int:
    """``mlx-steer record``: a prompt file -> activations at some sites, in a safetensors file."""
    from ..extraction.dataset_recording import record_dataset, save_recording
    from ..distributed.group import launched_group

    check_chat(args)
    out = check_output(args.output, force=args.force)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"{args.output}: record writes a .safetensors file (one tensor per site)")
    prompts = read_prompts(args.prompts_file)
    sites = args.sites or [f"layers.{n}" for n in args.layers]
    model = model_for(args)
    group = launched_group(model)  # under mlx.launch / torchrun: ranks share the prompts
    acts = record_dataset(model, prompts, sites=sites, read=args.read, reduce="mean" if args.mean else None,
                          batch_size=args.batch_size, chat=args.chat, system=args.system,
                          assistant_prefix=args.assistant_prefix, progress=args.progress, group=group)
    if group is not None and group.rank != 0:
        return 0  # rank 0 alone writes and prints
    size = group.size if group is not None else 1
    save_recording(acts, out, metadata={
        "model_id": getattr(model, "model_id", None) or "", "read": str(args.read) + (" (chat)" if args.chat else ""),
        "prompts": str(len(prompts)), "reduce": "mean" if args.mean else "none", "world_size": str(size)})
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in acts.items())
    ranks = f" on {size} ranks" if group is not None else ""
    print(f"wrote {out}: {shapes}; from {len(prompts)} prompts{ranks}")
    return 0
