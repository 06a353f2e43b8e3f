"""Find a Hugging Face model's decoder blocks, and what can be known about a site before running."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...engine.model_sizes import first_attr


def decoder_layer_container(model: nn.Module) -> str:
    """Dotted path of the ``nn.ModuleList`` holding the decoder blocks (``model.layers``, ``transformer.h``).

    Looks inside ``model.get_decoder()`` when there is one (so a vision tower's layers are not
    taken), for the ModuleList whose items are decoder blocks: transformers' checkpointable layer
    class or a class named in ``_no_split_modules``; among several, the one with
    ``num_hidden_layers`` items.

    Raises:
        ValueError: when no container, or more than one, fits.
    """
    names = {id(m): n for n, m in model.named_modules()}
    get_decoder = getattr(model, "get_decoder", None)
    scope = get_decoder() if callable(get_decoder) else model
    if not isinstance(scope, nn.Module) or id(scope) not in names:
        scope = model
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    ckpt = _checkpoint_layer_class()
    n_layers = _num_layers(getattr(model, "config", None))

    def is_block(m: nn.Module) -> bool:
        return (ckpt is not None and isinstance(m, ckpt)) or type(m).__name__ in block_names

    lists = [m for m in scope.modules() if isinstance(m, nn.ModuleList) and len(m)]
    found = [m for m in lists if all(is_block(b) for b in m)]
    if len(found) > 1 and n_layers is not None:
        found = [m for m in found if len(m) == n_layers] or found
    if not found and n_layers is not None:
        found = [m for m in lists if len(m) == n_layers]
    if len(found) != 1:
        what = ", ".join(names[id(m)] for m in found) or "none"
        raise ValueError(f"cannot tell which ModuleList holds the decoder layers (candidates: {what})")
    return names[id(found[0])]


def _checkpoint_layer_class() -> type | None:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return None
    return GradientCheckpointingLayer


def _num_layers(config: Any) -> int | None:
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return first_attr(config, "num_hidden_layers", "n_layer", "num_layers", default=None)


def conv1d_types() -> tuple[type, ...]:
    """GPT-2's Conv1D (a linear map with its weight stored (in, out)), when transformers has it."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return ()
    return (Conv1D,)


def is_projection(module: nn.Module) -> bool:
    """A linear map whose input may hold concatenated heads (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    return isinstance(module, (nn.Linear, *conv1d_types()))


def site_dim(module: nn.Module, point: str, hidden: int) -> int | None:
    """Activation size at a site when it can be known before running (None otherwise)."""
    if isinstance(module, nn.Linear):
        return module.out_features if point == "output" else module.in_features
    if isinstance(module, conv1d_types()) and isinstance(module.weight, nn.Parameter):  # GPT-2: weight is (in, out)
        n_in, n_out = module.weight.shape
        return n_out if point == "output" else n_in
    if isinstance(module, nn.Embedding):
        return module.embedding_dim if point == "output" else None
    return hidden
