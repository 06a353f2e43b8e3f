"""``mlx-steer serve``: its options and its handler (one command of :mod:`mlx_steer.cli`,
shaped like its command modules).

Everything a user can get wrong (a vector spec, a missing file, a busy port, a vector that does
not fit the model) is checked before the server starts and reported as ``error: ...`` (exit 2).
Nothing heavy is imported until the options are checked.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import socket
import sys
from pathlib import Path

SUMMARY = "serve an OpenAI-compatible API with per-request steering (and a playground at /)"
OPTION_GROUPS = ("backend",)  # the shared option groups it takes (see mlx_steer.cli.arguments.option_groups)
EXAMPLES = """\
Endpoints: GET /v1/models, GET /v1/vectors, POST /v1/chat/completions, POST /v1/completions
(stream or not), GET /health, and the playground at http://HOST:PORT/. A request steers with an
extra field, e.g. "steering": [{"vector": "love", "scale": 4, "layers": [7], "positions": "generated"}],
and "monitor": ["love"] streams each token's projection on that vector.

examples:
  mlx-steer serve --model ./my-model --vector love=love.safetensors
  mlx-steer serve --model ./my-model --vectors-dir ./vectors --port 8000 --api-key s3cret
  mlx-steer serve --model ./hf-folder --backend torch --vectors-dir ./vectors
  python -m mlx_steer.serve --model ./my-model --vector love=love.gguf"""
DEPENDENCIES = ("fastapi", "uvicorn", "sse_starlette")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {value}")
    return value


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to its subparser."""
    sp.add_argument("--model", required=True, metavar="PATH_OR_ID", help="model folder (or hub id, if cached)")
    sp.add_argument("--vector", action="append", default=[], metavar="NAME=FILE",
                    help="register a vector file (.safetensors or .gguf), or a hub repo ORG/NAME[@REV][:VECTOR], "
                         "under NAME (repeat for several)")
    sp.add_argument("--vectors-dir", metavar="DIR", help="register every vector file in DIR under its file stem")
    sp.add_argument("--sae", action="append", default=[], metavar="NAME=DIR",
                    help="register a sparse autoencoder (SAELens layout) under NAME: requests add or clamp its features")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    sp.add_argument("--api-key", metavar="KEY", default=None,
                    help="require 'Authorization: Bearer KEY' on /v1 (default: $MLX_STEER_API_KEY, else none)")
    sp.add_argument("--max-batch", type=_positive_int, default=32, metavar="N",
                    help="sequences decoded together (default 32)")
    sp.add_argument("--max-queue", type=_positive_int, default=64, metavar="N",
                    help="requests held at most, running and waiting; more get HTTP 429 (default 64)")
    sp.add_argument("--max-tokens", type=_positive_int, default=256, metavar="N",
                    help="max_tokens when a request gives none (default 256)")
    sp.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    """Check the options, load the model and vectors, and serve until interrupted."""
    missing = [m for m in DEPENDENCIES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"mlx-steer serve needs {', '.join(missing)}: pip install fastapi uvicorn sse-starlette "
                          "(the 'serve' extra)")
    specs = [_vector_spec(text) for text in args.vector]
    sae_specs = [_sae_spec(text) for text in args.sae]
    if args.vectors_dir is not None and not Path(args.vectors_dir).is_dir():
        raise FileNotFoundError(f"--vectors-dir: no such folder: {args.vectors_dir}")
    _check_listen(args.host, args.port)
    api_key = args.api_key if args.api_key is not None else os.environ.get("MLX_STEER_API_KEY") or None

    from ..loading import check_device, load
    from .app import context_length_of, create_app
    from .registry import VectorRegistry

    backend = getattr(args, "backend", "mlx")
    check_device(backend, args.device, option="--device")
    model = load(args.model, backend=backend, device=args.device)
    registry = VectorRegistry(model)
    for name, path in specs:
        registry.add_file(name, path)
    if args.vectors_dir is not None:
        registry.add_dir(args.vectors_dir)
    from ..sae import load_sae

    saes = {name: load_sae(folder, model=model) for name, folder in sae_specs}
    app = create_app(model, model_id=args.model, vectors=registry, api_key=api_key, backend=backend, saes=saes,
                     context_length=context_length_of(Path(args.model).expanduser()), max_batch=args.max_batch,
                     max_queue=args.max_queue, default_max_tokens=args.max_tokens)
    if not _loopback(args.host) and api_key is None:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    shown = "[" + args.host + "]" if ":" in args.host else args.host
    print(f"mlx-steer serve: {args.model} ({backend}) on http://{shown}:{args.port}/ - "
          f"vectors: {', '.join(registry) or 'none'}", file=sys.stderr, flush=True)

    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _sae_spec(text: str) -> tuple[str, Path]:
    from .registry import NAME

    name, sep, folder = text.partition("=")
    if not sep or not name or not folder or not NAME.match(name):
        raise ValueError(f"--sae {text!r}: expected NAME=DIR (a name of 1-64 letters, digits, '_', '.' or '-')")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--sae {name}: no such folder: {folder}")
    return name, path


def _vector_spec(text: str) -> tuple[str, Path]:
    from .registry import NAME

    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise ValueError(f"--vector {text!r}: expected NAME=FILE, e.g. love=love.safetensors")
    if not NAME.match(name):
        raise ValueError(f"--vector {text!r}: the name must be 1-64 letters, digits, '_', '.' or '-'")
    from ..vectors.hub import hub_spec, vector_source

    spec = hub_spec(file)  # a pack folder or a hub repo ORG/NAME[@REVISION][:VECTOR]
    if spec is not None:
        return name, vector_source(spec[0], revision=spec[1], name=spec[2])
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--vector {name}: no such file: {file}")
    return name, path


def _check_listen(host: str, port: int) -> None:
    """Fail now, with a clear message, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
