"""Module paths from earlier layouts (before ``backends/``, then before ``engine/``, ``vectors/`` and
``extraction/``).

Every earlier path in :data:`MOVED` still imports: ``import mlx_steer.steering_vector`` gives the module at
its new place, the same module object (so imports and monkeypatches keep working), with a
``DeprecationWarning`` naming the new path. A few names did not move with their module; importing the old
path says where each one is now (:data:`NAMES_ELSEWHERE`). The paths in :data:`GONE` no longer import:
the error names what replaced them. :data:`KEPT` are current public spellings, served without a warning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import FrameType, ModuleType

MOVED: dict[str, str] = {
    # before engine/, vectors/ and extraction/ (commit ce518f8)
    **{name: f"engine.{name}" for name in (
        "activations", "call_guard", "continuous", "hooks", "host_array", "interventions", "layer_skip",
        "layout", "model_sizes", "ops", "paths", "positions", "prompts", "recording", "text_stream")},
    "steerable": "engine.model", "backend": "engine.protocols", "site_plan": "engine.plan",
    **{name: f"vectors.{name}" for name in ("steering_vector", "vector_file", "gguf_vector", "similarity")},
    "methods": "extraction.methods", "method_table": "extraction.method_table",
    "activation_reader": "extraction.reader", "dataset_recording": "extraction.dataset_recording",
    "backends.mlx.patching": "backends.mlx.hooks", "backends.mlx.batching": "backends.mlx.batch_loop",
    "backends.torch.continuous": "backends.torch.batch_loop",
    # before backends/ (commit 3ded257): one ops module for both backends, each backend in its folder
    "mlx_hooks": "backends.mlx.hooks", "mlx_model": "backends.mlx.model", "mlx_ops": "engine.ops",
    "torch_backend.ops": "engine.ops",
    **{f"torch_backend.{name}": f"backends.torch.{name}"
       for name in ("generation", "hooks", "layers", "model", "sampling")},
    # single modules folded into others
    "serve.textstream": "engine.text_stream", "analysis._inputs": "analysis.vector_inputs",
}

KEPT = frozenset({"interventions", "torch_backend.sampling"})
"""Old paths that are also current public names (``from mlx_steer import interventions``)."""

NAMES_ELSEWHERE: dict[str, dict[str, str]] = {
    "mlx_hooks": {"Recorder": "engine.recording.Recorder", "ForwardState": "engine.positions.PositionState"},
    "torch_backend.hooks": {"Recorder": "engine.recording.Recorder",
                            "ForwardState": "engine.positions.PositionState"},
    "mlx_model": {"load": "load"},
    "torch_backend.generation": {"StreamingDetokenizer": "engine.text_stream.TextStream"},
    "torch_backend.layers": {"NORM_NAMES": "engine.paths.NORM_NAMES",
                             "final_norm_path": "engine.paths.final_norm_path"},
}
"""Per old path, the names its module had that are not in the new module, and what to use now
(``mlx_steer.`` + the value)."""

GONE: dict[str, str] = {
    "analysis.protocol": "its AnalysisModel is mlx_steer.engine.model.Steerable and its TraceLike is "
                         "mlx_steer.engine.results.Trace",
}
"""Old paths that no longer import, and what replaced them."""


def _caller_level() -> int:
    """``stacklevel`` that points the warning at the importer: ``warnings`` skips the frames of
    ``importlib._bootstrap`` by itself; this skips this module's and ``importlib.import_module``'s."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        internal = "importlib" in name and "_bootstrap" in name  # the test warnings itself applies
        if not internal and name not in (__file__, importlib.__file__):
            break
        level += 0 if internal else 1
        frame = frame.f_back
    return level


def deprecation_message(old: str) -> str:
    """What importing ``mlx_steer.<old>`` warns: the new path and the names that are elsewhere now."""
    message = f"mlx_steer.{old} moved to mlx_steer.{MOVED[old]}; import it from there"
    elsewhere = NAMES_ELSEWHERE.get(old, {})
    if elsewhere:
        message += " (" + ", ".join(f"{name} is now mlx_steer.{where}" for name, where in elsewhere.items()) + ")"
    return message


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``mlx_steer.<old path>`` and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("mlx_steer."):
            return None
        old = fullname.removeprefix("mlx_steer.")
        if old in GONE:
            raise ModuleNotFoundError(f"{fullname} was removed: {GONE[old]}", name=fullname)
        return None if old not in MOVED else importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        old = spec.name.removeprefix("mlx_steer.")
        module = importlib.import_module(f"mlx_steer.{MOVED[old]}")
        if old not in KEPT:
            warnings.warn(deprecation_message(old), DeprecationWarning, stacklevel=_caller_level())
        spec.loader_state = (module.__spec__, module.__loader__)  # stamped over next: kept to restore
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias's spec on the real module: give it back its own
        alias = module.__spec__
        module.__spec__, module.__loader__ = alias.loader_state if alias is not None else (None, None)


def install() -> None:
    """Serve the earlier paths (idempotent)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
