"""Module paths from before the package was split into ``engine/``, ``vectors/`` and
``extraction/``: ``import mlx_steer.steering_vector`` (and every other earlier path) still gives the
module at its new place, the same module object, so imports and monkeypatches keep working."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {
    **{name: f"engine.{name}" for name in (
        "activations", "call_guard", "continuous", "hooks", "host_array", "interventions", "layer_skip",
        "layout", "model_sizes", "ops", "paths", "positions", "prompts", "recording", "text_stream")},
    "steerable": "engine.model", "backend": "engine.protocols", "site_plan": "engine.plan",
    **{name: f"vectors.{name}" for name in ("steering_vector", "vector_file", "gguf_vector", "similarity")},
    "methods": "extraction.methods", "method_table": "extraction.method_table",
    "activation_reader": "extraction.reader", "dataset_recording": "extraction.dataset_recording",
    "backends.mlx.patching": "backends.mlx.hooks", "backends.mlx.batching": "backends.mlx.batch_loop",
    "backends.torch.continuous": "backends.torch.batch_loop",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``mlx_steer.<old path>`` and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname.removeprefix("mlx_steer.")) if fullname.startswith("mlx_steer.") else None
        return None if new is None else importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"mlx_steer.{MOVED[spec.name.removeprefix('mlx_steer.')]}")
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
