"""A llama-architecture GGUF as an fp32 Hugging Face / mlx-lm folder, read by MLX alone (no torch).

``mx.load`` reads the GGUF's tensors (Q4_0/Q4_1/Q8_0 blocks as MLX's quantized triples: packed weight,
scales, biases) and its metadata; each weight is dequantized to fp32, llama.cpp's permutation of the
query/key rows undone (its RoPE pairs neighbouring dimensions, HF's the two halves of a head), the
tensors renamed to HF's names and saved with safetensors; ``config.json`` comes from the ``llama.*``
metadata and the tokenizer from ``tokenizer.ggml.*`` (:mod:`mlx_steer.demo.gguf_tokenizer`). The folder
equals what transformers' GGUF loader saves (tests/test_mlx_only_setup.py) and both mlx-lm and
transformers read it.

MLX's reader decodes the k-quant types (Q4_K, Q6_K) wrongly, so a file holding them is refused here
(:mod:`mlx_steer.demo.qwen_model` converts those with transformers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .gguf_tokenizer import write_gguf_tokenizer

__all__ = ["convert_llama_gguf", "llama_config", "unpermute_rope_rows"]

_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's LLAMA_FTYPE values whose tensors mx.load returns decodable (k-quants it misreads).
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0"}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)$")


def convert_llama_gguf(gguf: Path, out: Path, *, model_id: str) -> None:
    """Dequantize a llama GGUF to fp32 and save model, config and tokenizer to ``out`` (an existing folder).

    Args:
        gguf: The GGUF file.
        out: The folder to write (config.json, generation_config.json, model.safetensors, tokenizer files).
        model_id: Recorded as the config's ``_model_name_or_path``.

    Raises:
        ValueError: the file is not a llama model, holds a tensor this mapping does not know, or a
            quantization MLX cannot decode (each message names the value and what is valid).
    """
    import mlx.core as mx

    loaded: Any = mx.load(str(gguf), return_metadata=True)
    tensors: dict[str, Any] = loaded[0]
    metadata: dict[str, Any] = loaded[1]
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported here; valid: 'llama'")
    file_type = int(metadata["general.file_type"].item()) if "general.file_type" in metadata else 0
    if file_type not in _FILE_TYPES:
        raise ValueError(f"GGUF file type {file_type} is not one MLX's reader decodes; valid: "
                         + ", ".join(f"{k} ({v})" for k, v in _FILE_TYPES.items()))
    config = llama_config(metadata, model_id=model_id, tied="output.weight" not in tensors)
    weights: dict[str, Any] = {}
    for name in sorted(tensors):
        if name.endswith((".scales", ".biases")) and name.rsplit(".", 1)[0] + ".weight" in tensors:
            continue  # read with its weight
        weights[_hf_name(name)] = _unpermuted(name, _dequantized(mx, tensors, name), config)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"], "output_attentions": False, "output_hidden_states": False,
        "pad_token_id": config["pad_token_id"], "use_cache": True,
    })
    write_gguf_tokenizer(metadata, out, model_max_length=config["max_position_embeddings"])


def llama_config(metadata: dict[str, Any], *, model_id: str, tied: bool) -> dict[str, Any]:
    """The HF ``LlamaConfig`` fields transformers derives from a llama GGUF's metadata, plus a top-level
    ``rope_theta`` (mlx-lm 0.32 reads only that; see :func:`mlx_steer.demo.gguf_folder.fix_rope_theta`)."""

    def num(key: str) -> Any:
        return metadata[key].item()

    heads, hidden = int(num("llama.attention.head_count")), int(num("llama.embedding_length"))
    theta = float(num("llama.rope.freq_base")) if "llama.rope.freq_base" in metadata else 10000.0

    def token_id(key: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{key}")
        return None if value is None else int(value.item())

    return {
        "_model_name_or_path": model_id,
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": token_id("bos_token_id"),
        "dtype": "float32",
        "eos_token_id": token_id("eos_token_id"),
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": int(num("llama.feed_forward_length")),
        "max_position_embeddings": int(num("llama.context_length")),
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": int(num("llama.block_count")),
        "num_key_value_heads": int(num("llama.attention.head_count_kv")),
        "pad_token_id": token_id("padding_token_id"),
        "pretraining_tp": 1,
        # float32 in the file; as a Python float it keeps the float32 value (9.999999747378752e-06)
        "rms_norm_eps": float(num("llama.attention.layer_norm_rms_epsilon")),
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
        "tie_word_embeddings": tied,
        "unk_token_id": token_id("unknown_token_id"),
        "use_cache": True,
        "vocab_size": len(metadata["tokenizer.ggml.tokens"]),
        "rope_theta": theta,
    }


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's query/key row permutation (``n_head``: the projection's own head count).

    llama.cpp's converter interleaves each head's two rotary halves; this is its inverse, as in
    transformers' ``LlamaTensorProcessor._reverse_permute_weights``.
    """
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _dequantized(mx: Any, tensors: dict[str, Any], name: str) -> Any:
    w = tensors[name]
    stem = name[: -len(".weight")]
    if f"{stem}.scales" in tensors:
        # in fp32: dequantizing with the file's fp16 scales would round every value to fp16
        scales, biases = (tensors[f"{stem}.{part}"].astype(mx.float32) for part in ("scales", "biases"))
        w = mx.dequantize(w, scales, biases, group_size=32, bits=_bits(w, scales))
    elif w.dtype not in (mx.float32, mx.float16, mx.bfloat16):
        raise ValueError(f"tensor {name!r} has dtype {w.dtype} that MLX's GGUF reader left undecoded; "
                         "valid: F32, F16, BF16, Q4_0, Q4_1, Q8_0")
    return w.astype(mx.float32)


def _bits(packed: Any, scales: Any) -> int:
    """4 or 8: 32-value groups packed into uint32 words (4 words for 4 bits, 8 for 8 bits)."""
    return 32 * packed.shape[-1] // (scales.shape[-1] * 32)


def _unpermuted(name: str, w: Any, config: dict[str, Any]) -> Any:
    import mlx.core as mx

    if name.endswith(("attn_q.weight", "attn_k.weight")):
        heads = config["num_attention_heads" if "attn_q" in name else "num_key_value_heads"]
        return mx.array(unpermute_rope_rows(np.array(w), heads))
    return w


def _hf_name(name: str) -> str:
    stem = name.removesuffix(".weight")
    if stem in _TOP and stem != name:
        return f"{_TOP[stem]}.weight"
    match = _BLOCK_NAME.match(stem)
    if match is None or match.group(2) not in _BLOCK or stem == name:
        raise ValueError(f"GGUF tensor {name!r} has no Hugging Face llama name here; valid: "
                         f"{sorted(_TOP)} and blk.N.{{{', '.join(sorted(_BLOCK))}}} (each '.weight')")
    return f"model.layers.{match.group(1)}.{_BLOCK[match.group(2)]}.weight"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
