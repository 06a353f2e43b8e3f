"""``mlx-steer sae train``: a TopK sparse autoencoder trained on MLX from a site's activations over a
prompt file, written in SAELens's layout (see :mod:`mlx_steer.sae`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import add_model, positive_int, seed, site, usage_error
from .inputs import read_prompts
from .loading import model_for

SUMMARY = "train a TopK sparse autoencoder on a site's activations (MLX), written in SAELens's layout"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
Records every token's activation at --site over the prompts (each prompt's first token, the attention
sink, left out, and any token whose norm is over 10x the median), trains a TopK SAE with MLX autodiff and Adam, and writes cfg.json and
sae_weights.safetensors (what SAELens reads) plus training.json: the explained variance, L0 and the
share of dead features on held-out tokens.

examples:
  mlx-steer sae train --model ./SmolLM2 --site layers.12 --prompts prompts.txt --features 4096 --k 32 -o sae12"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add ``sae train``'s options to its subparser."""
    sub = sp.add_subparsers(dest="sae_command", metavar="train", required=True)
    t = sub.add_parser("train", help="train a TopK SAE", description=SUMMARY)
    add_model(t)
    t.add_argument("--site", type=site, required=True, metavar="SITE", help="where to read, e.g. layers.12")
    t.add_argument("--prompts", required=True, metavar="FILE", help="text file, one prompt per line")
    t.add_argument("--features", type=positive_int, default=4096, help="SAE width (default 4096)")
    t.add_argument("--k", type=positive_int, default=32, help="features active per token (default 32)")
    t.add_argument("--epochs", type=positive_int, default=4, help="passes over the tokens (default 4)")
    t.add_argument("--batch-tokens", type=positive_int, default=1024, help="tokens per step (default 1024)")
    t.add_argument("--seed", type=seed, default=0,
                   help="seed of the split, the order and the initialization (0..2**64-1, default 0)")
    t.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the SAE into")
    t.add_argument("--overwrite", action="store_true", help="write into an existing folder")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer sae train``: record, train, write, report."""
    from ..sae import record_tokens, save_sae, train_topk_sae

    if getattr(args, "backend", "mlx") != "mlx":
        usage_error(args, "sae train runs on MLX (it trains with MLX autodiff); drop --backend torch")
    if args.k > args.features:
        usage_error(args, f"--k {args.k} is more than --features {args.features}")
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        usage_error(args, f"{args.output} is an existing file; -o must be a folder path (a new or empty folder)")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        usage_error(args, f"{args.output} exists; give a new folder or --overwrite")
    prompts = read_prompts(args.prompts)
    model = model_for(args)
    acts = record_tokens(model, prompts, site=args.site, progress=True)
    print(f"recorded {len(acts)} tokens of {len(prompts)} prompts at {model.resolve(args.site).key} (first tokens and "
          "massive activations left out)")
    sae, report = train_topk_sae(acts, features=args.features, k=args.k, site=args.site, epochs=args.epochs,
                                 batch_tokens=args.batch_tokens, seed=args.seed, progress=True)
    save_sae(sae, out, model_name=model.model_id)
    (out / "training.json").write_text(json.dumps({**report.__dict__, "prompts": len(prompts), "features": args.features,
                                                   "k": args.k, "site": args.site}, indent=2) + "\n")
    print(f"held-out tokens: explained variance {report.explained_variance:.3f}, L0 {report.l0:.1f}, dead features "
          f"{100 * report.dead_fraction:.1f} %; {report.steps} steps in {report.seconds:.0f} s; wrote {out}")
    return 0
