"""``mlx-steer export``: steering and directional ablation baked into the weights, written as a model
folder that plain mlx-lm / transformers load (see :meth:`mlx_steer.engine.model.Steerable.export`)."""

from __future__ import annotations

import argparse

from .arguments import add_model, finite, site, usage_error
from .inputs import existing_file
from .loading import describe, fit_vector, model_for, vector_file

SUMMARY = "bake a steering vector or a directional ablation into a model folder plain mlx-lm/transformers load"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
Writes a complete model folder (weights, config, tokenizer, chat template) plus mlx_steer_edit.json saying
what was baked. --vector adds the vector at each of its decoder layers (a bias on the layer's last
projection); --ablate removes a direction from every write to the residual stream (weight
orthogonalization: "abliteration"). Edits that cannot be baked exactly are refused before anything is
written; the folder appears complete or not at all.

examples:
  mlx-steer export --model ./SmolLM2 --ablate refusal.safetensors --out ./SmolLM2-abliterated
  mlx-steer export --model ./SmolLM2 --vector happy.safetensors --scale 4 --out ./SmolLM2-happy
  mlx_lm.generate --model ./SmolLM2-abliterated --prompt "Hello\""""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``export`` options to its subparser."""
    add_model(sp)
    sp.add_argument("--vector", metavar="FILE", help="vector file (or hub repo ORG/NAME[@REV][:VECTOR]) "
                    "to add at each of its decoder layers")
    sp.add_argument("--scale", type=finite, default=None, metavar="S", help="scale of --vector (required with it)")
    sp.add_argument("--ablate", metavar="FILE", help="vector file whose direction is removed from every residual write")
    sp.add_argument("--ablate-layer", type=site, metavar="N|SITE",
                    help="which of --ablate's sites holds the direction (default: its only one)")
    sp.add_argument("--no-embedding", action="store_true",
                    help="leave the embeddings as they are (orthogonalize the layers' writes only)")
    sp.add_argument("--out", "-o", required=True, metavar="DIR", help="model folder to write")
    sp.add_argument("--overwrite", action="store_true", help="replace --out if it is a previous export")
    sp.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                    help="store every floating weight in this dtype (default: the model's)")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer export``: check, load, bake, write."""
    from ..export import directional_ablation
    from ..export.folder import check_target
    from ..vectors.vector_file import load_vector

    if not (args.vector or args.ablate):
        usage_error(args, "give --vector FILE --scale S, --ablate FILE, or both")
    if args.vector and args.scale is None:
        usage_error(args, "--vector needs --scale S (how much of the vector to add)")
    if args.scale is not None and not args.vector:
        usage_error(args, "--scale goes with --vector")
    if args.ablate_layer is not None and not args.ablate:
        usage_error(args, "--ablate-layer goes with --ablate")
    check_target(args.out, overwrite=args.overwrite, source=args.model)  # before the model loads
    add = vector_file(args) if args.vector else None
    ablate = load_vector(existing_file(args.ablate)) if args.ablate else None
    model = model_for(args)
    interventions: dict[str, list] = {}
    note: dict[str, str] = {}
    if add is not None:
        add = fit_vector(args, model, add, None, None)  # checked against the model
        for key, spec in add.to_interventions(scale=args.scale).items():
            interventions.setdefault(key, []).append(spec)
        note.update(vector_file=str(args.vector), vector=describe(add), scale=str(args.scale))
        print(f"adding: {describe(add)} x {args.scale:g}")
    if ablate is not None:
        ablate = load_vector(existing_file(args.ablate), model=model)
        if args.ablate_layer is None and len(ablate.sites) != 1:
            usage_error(args, f"--ablate {args.ablate} has {len(ablate.sites)} sites ({', '.join(ablate.sites)}); "
                        "pick the direction's with --ablate-layer N")
        where = ablate.sites[0] if args.ablate_layer is None else model.resolve(args.ablate_layer).path
        if where not in ablate.directions:
            usage_error(args, f"--ablate {args.ablate} has no direction at {where}; its sites: {', '.join(ablate.sites)}")
        writes = directional_ablation(model, ablate.directions[where], embedding=not args.no_embedding)
        for key, ablation in writes.items():
            interventions.setdefault(key, []).append(ablation)
        note.update(ablate_file=str(args.ablate), ablate_site=where)
        print(f"ablating: the direction at {where} from {len(writes)} residual writes")
    out = model.export(args.out, interventions, dtype=args.dtype, overwrite=args.overwrite, note=note)
    print(f"wrote {out} (see {out}/mlx_steer_edit.json); it loads with plain "
          f"{'mlx_lm.load' if getattr(args, 'backend', 'mlx') == 'mlx' else 'AutoModelForCausalLM.from_pretrained'}")
    return 0
