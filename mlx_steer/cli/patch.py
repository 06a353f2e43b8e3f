"""``mlx-steer patch``: activation and/or attribution patching of a clean/corrupted prompt pair over
sites × positions, with a target-vs-foil logit difference as the metric; prints the table, and with
-o writes it (CSV, JSON) and a heatmap per method (PNG)."""

from __future__ import annotations

import argparse

from .arguments import add_model, positive_int
from .loading import model_for
from .output_folder import check_out_dir, write_into

SUMMARY = "find where a behaviour lives: activation / attribution patching over sites x positions"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
The metric is logit(target) - logit(foil) at the last position; each cell's fraction recovered is
(patched - corrupted) / (clean - corrupted). The prompts must tokenize to the same length.

examples:
  mlx-steer patch --model ./my-model --clean "The Eiffel Tower is in the city of" \\
      --corrupted "The Colosseum is in the city of" --target " Paris" --foil " Rome"
  mlx-steer patch --model ./my-model --clean ... --corrupted ... --target " Paris" --foil " Rome" \\
      --sites attn mlp --method both -o patch-out --json"""
OUTPUTS = ("patching.csv", "patching.json", "activation.png", "attribution.png")


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``patch`` options to its subparser."""
    add_model(sp)
    sp.add_argument("--clean", required=True, metavar="TEXT", help="the prompt that shows the behaviour")
    sp.add_argument("--corrupted", required=True, metavar="TEXT", help="the prompt that does not (same token length)")
    sp.add_argument("--target", required=True, metavar="TOKEN", help="the clean answer, one token (e.g. ' Paris')")
    sp.add_argument("--foil", required=True, metavar="TOKEN", help="the corrupted answer, one token (e.g. ' Rome')")
    sp.add_argument("--sites", nargs="+", default=["resid"], metavar="SITE",
                    help="resid (layer outputs, default), attn, mlp, heads (each attention head), or site paths "
                         "such as layers.3.mlp")
    sp.add_argument("--method", choices=("activation", "attribution", "both"), default="activation",
                    help="real patching (default), its gradient estimate, or both with their correlation")
    sp.add_argument("--positions", choices=("each", "all"), default="each",
                    help="a cell per position (default) or per site with every position patched")
    sp.add_argument("--batch-size", type=positive_int, default=32, help="cells per forward (default 32)")
    sp.add_argument("-o", "--out", metavar="DIR", help=f"write {', '.join(OUTPUTS)} into this folder")
    sp.add_argument("--force", action="store_true", help="overwrite those files in an existing folder")
    sp.add_argument("--json", action="store_true", help="print the table as JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer patch``."""
    from ..patching import patch

    out = check_out_dir(args.out, OUTPUTS, force=args.force) if args.out else None
    if out is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("-o writes heatmaps and needs matplotlib: pip install matplotlib (or drop -o)")
    model = model_for(args)
    table = patch(model, args.clean, args.corrupted, target=args.target, foil=args.foil, method=args.method,
                  sites=args.sites, positions=args.positions, batch_size=args.batch_size)
    print(table.to_json() if args.json else table.to_text())
    if out is not None:
        names = [OUTPUTS[0], OUTPUTS[1]] + [f"{m}.png" for m in table.methods]
        written = write_into(out, names, lambda paths: (
            table.to_csv(paths[0]), table.to_json(paths[1]),
            [table.heatmap(method, path) for method, path in zip(table.methods, paths[2:])]))
        if not args.json:
            print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
