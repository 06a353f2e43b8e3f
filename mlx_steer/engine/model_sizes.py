"""Read a model's sizes from its config (mlx-lm ``ModelArgs`` or a transformers config), whatever
the architecture calls them."""

from __future__ import annotations

from typing import Any


def first_attr(obj: Any, *names: str, default: Any = ...) -> Any:
    """The first of ``names`` that ``obj`` has (not None); ``default``, or ValueError, if none."""
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    if default is ...:
        raise ValueError(f"model config has none of {names}; cannot infer the model's sizes")
    return default


def model_sizes(config: Any) -> tuple[int, int | None]:
    """Hidden size and number of attention heads (None when the config does not say)."""
    hidden = int(first_attr(config, "hidden_size", "n_embd", "d_model"))
    heads = first_attr(config, "num_attention_heads", "n_head", "n_heads", default=None)
    return hidden, None if heads is None else int(heads)


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def position_table_path(names: list[str]) -> str | None:
    """Path of a learned absolute-position embedding (GPT-2's ``wpe``...), None for rotary models."""
    return next((n for n in names if n.rsplit(".", 1)[-1] in POSITION_TABLES), None)
