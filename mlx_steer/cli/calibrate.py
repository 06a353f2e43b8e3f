"""``mlx-steer calibrate``: a vector's coefficient per layer at a KL budget
(:func:`mlx_steer.analysis.calibrate`), written into the vector file; and ``--calibrated``, the
flag by which ``evaluate``, ``sweep`` and ``generate`` take strengths in those units."""

from __future__ import annotations

import argparse
from typing import Any

from .arguments import add_model, add_output, layer, non_negative, positive, positive_int, seed, usage_error
from .inputs import check_output, read_prompts
from .position_option import add_positions
from .loading import model_for, vector_path

SUMMARY = "find each layer's coefficient at a KL budget and store it in the vector file"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
The unsteered model continues neutral prompts (16 built in, or --prompts-file) for --rollout-tokens
tokens; the steered model reads the same tokens, and the coefficient is the scale at which the mean
(or --statistic pNN) of the per-token KL(unsteered || steered) reaches --target-kl nats. Each layer is
calibrated on its own. The calibrated vector is written to -o; evaluate, sweep and generate then take
--calibrated strengths (1 = that coefficient), and the server "units": "calibrated".

examples:
  mlx-steer calibrate happy.safetensors --model ./my-model --target-kl 0.5 -o happy.cal.safetensors
  mlx-steer calibrate happy.safetensors --model ./my-model --statistic p90 --target-kl 2 \\
      --layers 6 8 -o happy.safetensors --force
  mlx-steer evaluate --model ./my-model --vector happy.cal.safetensors --calibrated --strengths -2 -1 0 1 2 ..."""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``calibrate`` options to its subparser."""
    sp.add_argument("vector", metavar="FILE", help="vector file to calibrate (.safetensors)")
    add_model(sp)
    sp.add_argument("--target-kl", type=positive, default=0.5, metavar="NATS", help="the KL budget (default 0.5)")
    sp.add_argument("--statistic", default="mean", metavar="mean|pNN",
                    help="mean (default) or a percentile of the per-token KLs, e.g. p90")
    sp.add_argument("--layers", nargs="+", type=layer, metavar="N", help="layers to calibrate (default: the vector's sites)")
    sp.add_argument("--prompts-file", metavar="FILE", help="neutral prompts, one per line (default: 16 built in)")
    sp.add_argument("--rollout-tokens", type=positive_int, default=16, metavar="N",
                    help="tokens the unsteered model generates per prompt (default 16)")
    add_positions(sp, names=("all", "last", "prompt", "generated"), default="all",
                  help="where the calibration steers (default all)")
    sp.add_argument("--temp", type=non_negative, default=0.0, help="rollout sampling temperature (default 0: greedy)")
    sp.add_argument("--seed", type=seed, default=0, help="rollout sampling seed (0..2**64-1, default 0)")
    sp.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="rows per forward (default 32)")
    sp.add_argument("--no-chat", dest="chat", action="store_false", help="plain text prompts (a base model)")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")
    add_output(sp, "-o", "--output", required=True, help="where to write the calibrated vector (.safetensors; with --force it may be the input)")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer calibrate``."""
    from ..analysis.kl_calibration import calibrate
    from ..vectors.calibration import check_statistic
    from ..vectors.vector_file import load_vector, save_vector

    check_statistic(args.statistic)
    if not args.output.lower().endswith(".safetensors"):
        usage_error(args, f"-o {args.output}: a calibrated vector is written as .safetensors (a GGUF holds no calibration)")
    path = vector_path(args.vector)
    out = check_output(args.output, force=args.force)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else None
    model = model_for(args)
    vec = load_vector(path, model=model)
    sites = [model.resolve(f"layers.{x}" if isinstance(x, int) else x).path for x in args.layers] if args.layers else None
    cal = calibrate(model, vec, target_kl=args.target_kl, statistic=args.statistic, sites=sites, prompts=prompts,
                    rollout_tokens=args.rollout_tokens, positions=args.positions, chat=args.chat, temp=args.temp,
                    seed=args.seed, batch_size=args.batch_size, progress=args.progress)
    c = cal.calibration
    assert c is not None
    print(f"calibrated to KL {c.target_kl:g} nats ({c.statistic}) over {c.n_prompts} prompts x {c.rollout_tokens} tokens:")
    for site, coefficient in c.coefficients.items():
        print(f"  {site}  coefficient {coefficient:.6g}  (KL {c.achieved_kl[site]:.4g})")
    save_vector(cal, out)
    print(f"wrote {out}")
    return 0


def add_calibrated_flag(sp: argparse.ArgumentParser) -> None:
    """``--calibrated``: strengths in calibrated units."""
    sp.add_argument("--calibrated", action="store_true",
                    help="strengths in calibrated units: 1 = the vector's coefficient at each layer's KL budget "
                         "(see mlx-steer calibrate)")


def in_calibrated_units(args: argparse.Namespace, model: Any, vec: Any, layers: list | None) -> Any:
    """With ``--calibrated``, the vector whose raw strength ``s`` is ``s`` calibrated units at ``layers``
    (default its sites); without it, ``vec`` as it is.

    Raises:
        ValueError: the vector has no calibration, or none for one of ``layers`` (exit 2).
    """
    if not getattr(args, "calibrated", False):
        return vec
    from ..vectors.calibrated_units import calibrated_vector

    if not getattr(args, "vector", None):
        usage_error(args, "--calibrated needs a calibrated --vector file (see mlx-steer calibrate)")
    sites = None if not layers else tuple(dict.fromkeys(
        model.resolve(f"layers.{x}" if isinstance(x, int) else x).path for x in layers))
    return calibrated_vector(vec, sites=sites)
