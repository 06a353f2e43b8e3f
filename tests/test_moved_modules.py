"""Every module path the package ever had (from its git history) still imports, as the same module
object as its new path, with a DeprecationWarning naming that path; or it fails saying what replaced it.

The table below is written from the history (each old module's public names at its last version), not
from ``mlx_steer.moved_modules``, so the module cannot agree with itself by construction."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from mlx_steer import moved_modules

# old path -> (new path, the old module's public names at its last version)
HISTORY: dict[str, tuple[str, tuple[str, ...]]] = {
    "activation_reader": ("extraction.reader", ()),
    "activations": ("engine.activations", ()),
    "backend": ("engine.protocols", ()),
    "backends.mlx.batching": ("backends.mlx.batch_loop", ()),
    "backends.mlx.patching": ("backends.mlx.hooks", ()),
    "backends.torch.continuous": ("backends.torch.batch_loop", ()),
    "call_guard": ("engine.call_guard", ()),
    "continuous": ("engine.continuous", ()),
    "dataset_recording": ("extraction.dataset_recording", ()),
    "gguf_vector": ("vectors.gguf_vector", ()),
    "hooks": ("engine.hooks", ()),
    "host_array": ("engine.host_array", ()),
    "interventions": ("engine.interventions", ()),
    "layer_skip": ("engine.layer_skip", ()),
    "layout": ("engine.layout", ()),
    "method_table": ("extraction.method_table", ()),
    "methods": ("extraction.methods", ()),
    "model_sizes": ("engine.model_sizes", ()),
    "ops": ("engine.ops", ()),
    "paths": ("engine.paths", ()),
    "positions": ("engine.positions", ()),
    "prompts": ("engine.prompts", ()),
    "recording": ("engine.recording", ()),
    "similarity": ("vectors.similarity", ()),
    "site_plan": ("engine.plan", ()),
    "steerable": ("engine.model", ()),
    "steering_vector": ("vectors.steering_vector", ()),
    "text_stream": ("engine.text_stream", ()),
    "vector_file": ("vectors.vector_file", ()),
    "serve.textstream": ("engine.text_stream", ("TextStream",)),
    "analysis._inputs": ("analysis.vector_inputs", (
        "batches", "directions", "is_vector_set", "pick", "prompt_list", "site_key", "unit_direction",
        "vector_hook_point")),
    # removed in 3ded257 (the 9 the issue found broken)
    "mlx_hooks": ("backends.mlx.hooks", (
        "Entry", "ForwardState", "Recorder", "attach", "bypassed", "cache_offsets", "detach", "is_patched",
        "on_first_arg", "on_output", "position_tracker")),
    "mlx_model": ("backends.mlx.model", ("SteerableModel", "load")),
    "mlx_ops": ("engine.ops", (
        "AblateHeadsOp", "AddOp", "CustomOp", "FrontAlignedAddOp", "Op", "ProjectOutOp", "ScaleOp", "SetOp",
        "compile_op")),
    "torch_backend.generation": ("backends.torch.generation", (
        "GenerationResponse", "StreamingDetokenizer", "eos_token_ids", "generate_step")),
    "torch_backend.hooks": ("backends.torch.hooks", (
        "Fn", "ForwardState", "Recorder", "attach", "attach_tracker", "cache_keyword", "cache_length",
        "left_padding", "position_tracker")),
    "torch_backend.layers": ("backends.torch.layers", (
        "NORM_NAMES", "decoder_layer_container", "final_norm_path", "first_attr", "is_projection", "site_dim")),
    "torch_backend.model": ("backends.torch.model", ("TorchSteerableModel",)),
    "torch_backend.ops": ("engine.ops", (
        "AblateHeadsOp", "AddOp", "CustomOp", "FrontAlignedAddOp", "Op", "ProjectOutOp", "ScaleOp", "SetOp",
        "compile_op")),
    "torch_backend.sampling": ("backends.torch.sampling", (
        "LogitsProcessor", "Sampler", "apply_min_p", "apply_top_k", "apply_top_p", "greedy",
        "make_logits_processors", "make_repetition_penalty", "make_sampler")),
}
CURRENT_NAMES = {"interventions", "torch_backend.sampling"}  # documented spellings today: no warning


def _fresh_import(old: str) -> tuple[object, list[warnings.WarningMessage]]:
    if old.startswith("torch_backend."):
        pytest.importorskip("torch")
    sys.modules.pop(f"mlx_steer.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"mlx_steer.{old}")
    return module, [w for w in caught if issubclass(w.category, DeprecationWarning)]


def _resolve(dotted: str) -> object:
    """``mlx_steer.<dotted>``: a module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), -1, -1):
        try:
            obj: object = importlib.import_module(".".join(["mlx_steer", *parts[:cut]]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise AssertionError(dotted)


def test_the_history_table_covers_every_served_and_removed_path():
    assert set(moved_modules.MOVED) == set(HISTORY)
    assert set(moved_modules.GONE) == {"analysis.protocol"}


@pytest.mark.parametrize("old", sorted(HISTORY))
def test_old_path_imports_the_new_module_and_warns_with_its_path(old):
    new, old_names = HISTORY[old]
    module, caught = _fresh_import(old)
    assert module is importlib.import_module(f"mlx_steer.{new}")
    assert module.__name__ == f"mlx_steer.{new}" and module.__spec__.name == f"mlx_steer.{new}"
    if old in CURRENT_NAMES:
        assert caught == []
        return
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"mlx_steer.{old} moved to mlx_steer.{new};" in message
    assert caught[0].filename == __file__  # points at the importer, not at importlib
    for name in old_names:
        if hasattr(module, name):
            continue
        # a name that stayed behind: the warning names where it is now, and it is there
        where = moved_modules.NAMES_ELSEWHERE[old][name]
        assert f"{name} is now mlx_steer.{where}" in message
        _resolve(where)


def test_a_removed_path_says_what_replaced_it():
    with pytest.raises(ModuleNotFoundError, match="analysis.protocol was removed: its AnalysisModel is "
                                                  "mlx_steer.engine.model.Steerable"):
        importlib.import_module("mlx_steer.analysis.protocol")
    from mlx_steer.engine.model import Steerable
    from mlx_steer.engine.results import Trace

    assert Steerable and Trace


def test_from_import_of_an_old_sibling_warns_at_the_importer():
    sys.modules.pop("mlx_steer.similarity", None)
    vars(importlib.import_module("mlx_steer")).pop("similarity", None)
    with pytest.warns(DeprecationWarning, match=r"mlx_steer\.vectors\.similarity") as caught:
        from mlx_steer import similarity
    assert similarity is importlib.import_module("mlx_steer.vectors.similarity")
    assert caught[0].filename == __file__
