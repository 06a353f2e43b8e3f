"""The ``mlx-steer`` command line: extract, record, generate, sweep, inspect, serve, doctor, demo.

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

Modules: :mod:`.main` (``main``, ``build_parser``), one per command (:mod:`.extract`, :mod:`.record`,
:mod:`.generate`, :mod:`.sweep`, :mod:`.inspect`, :mod:`.doctor`, :mod:`.demo`; ``serve`` is
:mod:`mlx_steer.serve.command`), :mod:`.arguments` (shared options, option types, usage errors),
:mod:`.inputs` (prompt and pair files, output paths) and :mod:`.loading` (the model and vector a
command loads).
"""

from __future__ import annotations

from .arguments import BACKENDS, METHODS
from .inputs import check_output, read_pairs, read_prompts
from .loading import NonFiniteError, load_model
from .main import build_parser, main
from .sweep import DEFAULT_PROMPTS, DEFAULT_STRENGTHS

__all__ = ["BACKENDS", "DEFAULT_PROMPTS", "DEFAULT_STRENGTHS", "METHODS", "NonFiniteError", "build_parser",
           "check_output", "load_model", "main", "read_pairs", "read_prompts"]
