"""``mlx-steer lens``: the logit lens (or a trained tuned lens) over every layer of some prompts,
printed as a layers x positions table, with -o written as CSV, JSON and a heatmap per prompt; and
``mlx-steer lens --train PROMPTS -o DIR``, which trains tuned-lens translators and saves them."""

from __future__ import annotations

import argparse

from .arguments import add_model, positive, positive_int, probability, seed, usage_error
from .inputs import read_prompts
from .loading import model_for
from .output_folder import check_out_dir, write_into

SUMMARY = "logit lens and tuned lens: what each layer's residual predicts, per position"
OPTION_GROUPS = ("backend", "encode")
EXAMPLES = """\
Each layer's output at each position is read through the model's final norm and unembedding (after a
trained translator with --tuned). Cells show the top token and, with --targets, the target's
probability; a target must be one token (mind the leading space). Positions count from each prompt's
first real token.

examples:
  mlx-steer lens --model ./my-model "The capital of France is" --targets " Paris"
  mlx-steer lens --model ./my-model "The capital of France is" --positions -1 --top-k 10 -o lens-out --json
  mlx-steer lens --model ./my-model --train prompts.txt -o tuned/ --steps 200
  mlx-steer lens --model ./my-model "The capital of France is" --tuned tuned/ --targets " Paris\""""
OUTPUTS = ("lens.csv", "lens.json")


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``lens`` options to its subparser."""
    add_model(sp)
    sp.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to read (not with --train)")
    sp.add_argument("--targets", nargs="+", metavar="TOKEN",
                    help="a one-token target for every prompt, or one per prompt")
    sp.add_argument("--tuned", metavar="DIR", help="tuned-lens translators (from --train) to read through")
    sp.add_argument("--top-k", type=positive_int, default=5, help="top tokens kept per cell (default 5)")
    sp.add_argument("--layers", nargs="+", type=int, metavar="N", help="decoder layers (default all)")
    sp.add_argument("--positions", nargs="+", default=["all"], metavar="all|last|INT",
                    help="positions to read: all (default), last, or indices (negative from the end)")
    sp.add_argument("--stage", choices=("output", "input"), default="output",
                    help="read each layer's output (default) or its input")
    sp.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward (default 8)")
    sp.add_argument("-o", "--out", metavar="DIR",
                    help="lens: write lens.csv, lens.json and lens-N.png here; --train: the translators' folder")
    sp.add_argument("--force", action="store_true", help="overwrite those files in an existing folder")
    sp.add_argument("--json", action="store_true", help="print the table (or training report) as JSON")
    g = sp.add_argument_group("training (--train)")
    g.add_argument("--train", metavar="PROMPTS_FILE", help="train tuned-lens translators on these prompts")
    g.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default 100)")
    g.add_argument("--lr", type=positive, default=1e-3, help="learning rate (default 1e-3)")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default sgd")
    g.add_argument("--batch-tokens", type=positive_int, default=256, help="tokens per step (default 256)")
    g.add_argument("--held-out", type=probability, default=0.2, help="share of prompts held out (default 0.2)")
    g.add_argument("--seed", type=seed, default=0, help="split and shuffle seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer lens``."""
    if args.system is not None or args.assistant_prefix is not None:
        usage_error(args, "--system and --assistant-prefix do not apply to the lens; use --chat alone")
    if args.train is not None:
        return _train(args)
    if not args.prompts:
        usage_error(args, "give one or more prompts to read, or --train PROMPTS_FILE -o DIR to train translators")
    from ..lens import TunedLens, logit_lens

    positions = _positions(args)
    out = check_out_dir(args.out, _outputs(len(args.prompts)), force=args.force) if args.out else None
    model = model_for(args)
    tuned = TunedLens.load(args.tuned, model=model) if args.tuned else None
    targets = None if not args.targets else (args.targets[0] if len(args.targets) == 1 else args.targets)
    table = logit_lens(model, args.prompts, targets=targets, layers=args.layers, positions=positions,
                       top_k=args.top_k, stage=args.stage, tuned=tuned, chat=args.chat, batch_size=args.batch_size)
    print(table.to_json() if args.json else table.to_text())
    if out is not None:
        written = write_into(out, _outputs(len(args.prompts)), lambda paths: (
            table.to_csv(paths[0]), table.to_json(paths[1]),
            [table.plot(prompt=i, path=p) for i, p in enumerate(paths[2:])]))
        if not args.json:
            print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from ..lens import train_tuned_lens
    from ..lens.tuned_lens import CONFIG_NAME, WEIGHTS_NAME

    if args.prompts or args.tuned or args.targets:
        usage_error(args, "--train takes its prompts from the file; drop the PROMPT arguments, --tuned and --targets")
    if not args.out:
        usage_error(args, "--train needs -o DIR, the folder to save the translators in")
    out = check_out_dir(args.out, (CONFIG_NAME, WEIGHTS_NAME), force=args.force)
    prompts = read_prompts(args.train)
    model = model_for(args)
    lens, report = train_tuned_lens(model, prompts, steps=args.steps, lr=args.lr, optimizer=args.optimizer,
                                    batch_tokens=args.batch_tokens, held_out=args.held_out, seed=args.seed,
                                    chat=args.chat)
    write_into(out, (CONFIG_NAME, WEIGHTS_NAME), lambda paths: lens.save(out))
    if args.json:
        print(json.dumps({"layers": report.layers, "logit_kl": report.logit_kl, "tuned_kl": report.tuned_kl,
                          "train_tokens": report.train_tokens, "held_out_tokens": report.held_out_tokens,
                          "steps": report.steps, "seconds": report.seconds, "out": str(out)}, indent=1))
    else:
        print(report.to_text())
        print(f"wrote {out / CONFIG_NAME}, {out / WEIGHTS_NAME}")
    return 0


def _positions(args: argparse.Namespace) -> object:
    items = args.positions
    if len(items) == 1 and items[0] in ("all", "last"):
        return items[0]
    try:
        return [int(x) for x in items]
    except ValueError:
        usage_error(args, f"--positions takes all, last, or integers; got {' '.join(items)}")


def _outputs(n: int) -> tuple[str, ...]:
    return (*OUTPUTS, *(f"lens-{i}.png" for i in range(n)))
