"""The model and the steering vector a command works with. Every command loads its model through
:func:`load_model` here (one place); the heavy imports happen inside the functions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .inputs import existing_file


class NonFiniteError(ValueError):
    """The model produced NaN or infinite logits (typically a strength it overflows at)."""


def load_model(spec: str, *, backend: str = "mlx", device: str | None = None) -> Any:
    """:func:`mlx_steer.load`, with a device error naming the ``--device`` option."""
    from ..loading import check_device, load

    check_device(backend, device, option="--device")
    return load(spec, backend=backend, device=device)


def model_for(args: argparse.Namespace) -> Any:
    """The --model of a command, on its --backend and --device."""
    return load_model(args.model, backend=getattr(args, "backend", "mlx"), device=args.device)


def vector_path(text: str) -> Path:
    """A --vector: a file, a vector-pack folder ``FOLDER[:VECTOR]``, or a hub repo
    ``ORG/NAME[@REVISION][:VECTOR]`` (from the hub cache, or downloaded unless HF_HUB_OFFLINE)."""
    from ..vectors.hub import hub_spec, vector_source

    spec = hub_spec(text)
    return existing_file(text) if spec is None else vector_source(spec[0], revision=spec[1], name=spec[2])


def vector_file(args: argparse.Namespace) -> Any:
    """The --vector file, read without a model (checked against the model later)."""
    from ..vectors.vector_file import load_vector

    return load_vector(vector_path(args.vector))


def fit_vector(
    args: argparse.Namespace, model: Any, vec: Any, contrast: tuple[list[str], list[str]] | None,
    sites: list[str] | None,
) -> Any:
    """The steering vector for ``model``: the --vector file checked against it (restricted to
    ``sites`` when given), or one extracted from the contrast prompts at ``sites``."""
    from ..extraction.directions import extract
    from ..vectors.vector_file import load_vector

    if vec is None:
        assert contrast is not None and sites, "the commands check: contrast prompts come with --layer(s)"
        return extract(model, *contrast, sites=sites, method=args.method, read=args.read, progress=False)
    vec = load_vector(vector_path(args.vector), model=model)  # raises with every mismatch listed
    if sites:
        vec = vec.select([model.resolve(s).path for s in sites])
    return vec


def describe(vec: Any) -> str:
    """``method at site (norm N), ...``: a vector in one line."""
    norms = ", ".join(f"{s} (norm {n:.4g})" for s, n in vec.norms().items())
    return f"{vec.method or 'vector'} at {norms}"
