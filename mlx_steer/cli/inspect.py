"""``mlx-steer inspect``: a vector file's metadata and norms; with --model, its fit and top tokens."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .arguments import add_model, positive_int
from .inputs import printable
from .loading import model_for, vector_path

if TYPE_CHECKING:
    from ..vectors.steering_vector import SteeringVector

SUMMARY = "show a vector file's metadata, norms and (with --model) top tokens"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
examples:
  mlx-steer inspect happy.safetensors
  mlx-steer inspect happy.safetensors --model ./my-model -k 20
  mlx-steer --backend torch inspect happy.safetensors --model ./hf-folder --final-norm"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``inspect`` options to its subparser."""
    sp.add_argument("vector", metavar="FILE", help="vector file (.safetensors, or a control-vector .gguf), a pack folder, "
                    "or a hub repo ORG/NAME[@REV][:VECTOR]")
    add_model(sp, required=False)
    sp.add_argument("-k", "--top-k", type=positive_int, default=10, help="tokens per list with --model (default 10)")
    sp.add_argument("--final-norm", action="store_true", help="apply the final norm before unembedding (logit lens)")


def _shown(vec: SteeringVector, name: str) -> str:
    """A metadata field as printed: a file that does not record it (a GGUF has no model id, method ...)
    says so, and a GGUF's model id points at its model hint."""
    value = getattr(vec, name)
    if value is not None:
        return printable(value)
    hint = vec.extra.get("model_hint")
    return f"not recorded (model hint: {printable(hint)})" if name == "model_id" and hint else "not recorded"


def run(args: argparse.Namespace) -> int:
    """``mlx-steer inspect``: metadata and norms; with --model, the fit and top tokens per site."""
    from ..analysis import top_tokens
    from ..vectors.vector_file import load_vector

    path = vector_path(args.vector)
    vec = load_vector(path)
    fields = ("model_id", "method", "read_positions", "hook_point", "hidden_size", "dtype", "created_by")
    print(f"file: {printable(args.vector)}")
    for name in fields:
        print(f"{name + ':':<15} {_shown(vec, name)}")
    for key, value in vec.extra.items():
        print(f"{'extra.' + printable(key) + ':':<15} {printable(value)}")
    cal = vec.calibration
    if cal is not None:
        print(f"{'calibration:':<15} target KL {cal.target_kl:g} nats ({cal.statistic}) over {cal.n_prompts} prompts x "
              f"{cal.rollout_tokens} rollout tokens ({'greedy' if cal.temp == 0 else f'temp {cal.temp:g}, seed {cal.seed}'}), "
              f"steering positions {printable(cal.positions)}; strength 1 in calibrated units = the coefficient")
    sites = {site: printable(site) for site in vec.sites}
    w = max(map(len, sites.values()))
    print(f"sites ({len(vec)}):")
    for site, norm in vec.norms().items():
        c = cal.coefficients.get(site) if cal is not None else None
        coefficient = "" if c is None or cal is None else \
            f"  coefficient {c:.6g} (KL {cal.achieved_kl.get(site, float('nan')):.4g})"
        print(f"  {sites[site]:<{w}}  shape {str(vec[site].shape):<10} norm {norm:.6g}{coefficient}")
    if not args.model:
        return 0
    model = model_for(args)
    vec = load_vector(path, model=model)
    print(f"\nfits {args.model} (hidden size {model.hidden_size}); tokens each direction boosts and suppresses"
          f"{' (after the final norm)' if args.final_norm else ''}:")
    for site, d in vec.directions.items():
        label = site if d.ndim == 1 else f"{site} (sum of its {d.shape[0]} front-aligned rows)"
        report = top_tokens(model, d if d.ndim == 1 else d.sum(0), k=args.top_k, final_norm=args.final_norm)
        print(f"\n{label}\n{report.to_text()}")
    return 0
