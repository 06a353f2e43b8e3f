"""A byte-level BPE tokenizer (GPT-2 style, ``tokenizer.ggml.model = "gpt2"``) from GGUF metadata, without torch.

Writes what transformers' own GGUF conversion writes for SmolLM2 (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``), built with the ``tokenizers`` library only: the
vocabulary and merges as the file spells them, the tokens the file marks as control (type 3) added as
special tokens and user-defined ones (type 4) as plain added tokens, byte-level pre-tokenization without
a prefix space, and no BOS/EOS added on encode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_gguf_tokenizer"]

_CONTROL, _USER_DEFINED = 3, 4
# What a pre-tokenizer name means beyond plain byte-level splitting; only these are known to be plain.
_PLAIN_BYTE_LEVEL = ("smollm", "gpt2", "default")


def write_gguf_tokenizer(metadata: Mapping[str, Any], out: Path, *, model_max_length: int) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` to ``out``.

    Args:
        metadata: The GGUF's metadata (``mx.load(path, return_metadata=True)[1]``); scalars may be
            0-d arrays.
        out: An existing folder.
        model_max_length: Recorded in ``tokenizer_config.json`` (a GGUF states no maximum itself).

    Raises:
        ValueError: the metadata describes a tokenizer other than a plain byte-level BPE (names the
            ``tokenizer.ggml.model`` / ``tokenizer.ggml.pre`` found and the ones supported).
    """
    kind, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _PLAIN_BYTE_LEVEL:
        raise ValueError(
            f"GGUF tokenizer model {kind!r} with pre-tokenizer {pre!r} is not supported; "
            f"valid: model 'gpt2' with pre-tokenizer one of {list(_PLAIN_BYTE_LEVEL)}"
        )
    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    types = [int(t) for t in _as_list(metadata.get("tokenizer.ggml.token_type", ()))]
    tokenizer = _byte_level_bpe(tokens, metadata["tokenizer.ggml.merges"], types)
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return None if index is None else tokens[int(index)]

    config = {
        "backend": "tokenizers",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "model_max_length": model_max_length,
        "pad_token": token("padding_token_id"),
        "tokenizer_class": "TokenizersBackend",
        "unk_token": token("unknown_token_id"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    template = metadata.get("tokenizer.chat_template")
    if template:
        (out / "chat_template.jinja").write_text(str(template), encoding="utf-8")


def _byte_level_bpe(tokens: Sequence[str], merges: Sequence[str], types: list[int]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    spelled = {t: i for i, t in enumerate(tokens)}
    pairs = [(a, b) for a, b in (m.split(" ", 1) for m in merges)]
    tokenizer = Tokenizer(models.BPE(
        vocab=spelled, merges=pairs, fuse_unk=False, byte_fallback=False, continuing_subword_prefix="",
        end_of_word_suffix="",
    ))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel (transformers skips it too).
    control = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
               if k == _CONTROL and set(t) <= alphabet]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    tokenizer.add_special_tokens(control)
    tokenizer.add_tokens(user)
    return tokenizer


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)
