"""Where each architecture writes to the residual stream: what baking an edit into weights needs to know.

A block adds two things to the residual stream: its attention output projection and its MLP's last
projection. Baking is exact only where those linear layers are the writes themselves (no norm after
them, as gemma2's post-norms are) — then orthogonalizing them removes a direction from every write,
and a bias on the MLP's last projection adds a vector to the block's output. A vector added to the
attention output projection's input (head steering) is exactly ``W v`` added to that projection's
bias, whatever follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHITECTURES", "Architecture", "architecture"]


@dataclass(frozen=True)
class Architecture:
    """One ``model_type``'s residual writes, relative to a decoder layer's path.

    Attributes:
        attention_out: The attention output projection.
        mlp_out: The MLP's last projection (the block's last residual write).
        post_norms: A norm sits between those projections and the residual (nothing bakes exactly).
        mlp_bias_flag: The config flag that gives the MLP projections biases (None: there is none).
        mlp_bias_modules: The projections that flag gives a bias to.
        attention_bias_flag: The config flag that gives the attention projections biases (None: none;
            llama's ``attention_bias``, which both mlx-lm and transformers read).
        attention_bias_modules: The projections that flag gives a bias to.
    """

    attention_out: str
    mlp_out: str
    post_norms: bool = False
    mlp_bias_flag: str | None = None
    mlp_bias_modules: tuple[str, ...] = ()
    attention_bias_flag: str | None = None
    attention_bias_modules: tuple[str, ...] = ()


_LLAMA = Architecture("self_attn.o_proj", "mlp.down_proj", mlp_bias_flag="mlp_bias",
                      mlp_bias_modules=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
                      attention_bias_flag="attention_bias",
                      attention_bias_modules=tuple(f"self_attn.{p}_proj" for p in "qkvo"))
_PLAIN = Architecture("self_attn.o_proj", "mlp.down_proj")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,  # SmolLM2, Llama 2/3
    "mistral": _PLAIN,
    "qwen2": _PLAIN,
    "qwen3": _PLAIN,
    "phi3": _PLAIN,
    "gemma": _PLAIN,
    "gpt2": Architecture("attn.c_proj", "mlp.c_proj"),  # Conv1D projections with biases
    "gemma2": Architecture("self_attn.o_proj", "mlp.down_proj", post_norms=True),
    "gemma3_text": Architecture("self_attn.o_proj", "mlp.down_proj", post_norms=True),
}


def architecture(model_type: str | None, *, what: str) -> Architecture:
    """The known architecture, or a ValueError saying what cannot be baked for an unknown one."""
    arch = ARCHITECTURES.get(model_type or "")
    if arch is None:
        raise ValueError(f"{what} needs to know where model_type {model_type!r} writes to the residual stream; "
                         f"known: {', '.join(sorted(ARCHITECTURES))}")
    return arch
