"""Prompt encoding shared by both backends: plain text, token ids, or chat turns via the template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np


class PromptEncoder:
    """Encodes prompts the way mlx-lm's ``stream_generate`` does (BOS unless the text has it).

    Args:
        tokenizer: an HF tokenizer or mlx-lm ``TokenizerWrapper``.
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # rows of the model's embedding: ids must be below it

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            v = getattr(tok, name, None)
            if isinstance(v, int):
                return v
        return 0

    def chat_text(
        self, user: str, *, system: str | None = None, assistant_prefix: str | None = None
    ) -> str:
        """The templated text of a user turn, ready for the assistant's reply (plus a prefix)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; pass chat=False")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + (assistant_prefix or "")

    def encode(
        self,
        prompt: str | Sequence[int] | np.ndarray,
        *,
        chat: bool = False,
        system: str | None = None,
        assistant_prefix: str | None = None,
    ) -> list[int]:
        """Token ids for one prompt. Raises ValueError on an empty prompt."""
        if isinstance(prompt, str):
            text = self.chat_text(prompt, system=system, assistant_prefix=assistant_prefix) if chat else prompt
            bos = getattr(self.tokenizer, "bos_token", None)
            special = not chat and (bos is None or not text.startswith(bos))
            ids = self.check_ids(list(self.tokenizer.encode(text, add_special_tokens=special)))
        else:
            if chat:
                raise ValueError("chat=True needs text prompts; token ids are used as they are")
            ids = self.check_ids(prompt)
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
        return ids

    def check_ids(self, ids: object) -> list[int]:
        """``ids`` (a list of ints or numpy integers, or a 1-D integer array) as a list of ints.

        Raises:
            TypeError: not a sequence of integers (None, floats, bools, nested lists...).
            ValueError: an id outside the model's vocabulary.
        """
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"token ids must be a 1-D integer array, got shape {ids.shape} of {ids.dtype}")
            ids = ids.tolist()
        if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)):
            raise TypeError(f"a prompt must be a string or a list of token ids, got {type(ids).__name__}")
        out = []
        for t in ids:
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"token ids must be ints, got {type(t).__name__} {t!r}")
            out.append(int(t))
        V = self.vocab_size
        bad = [t for t in out if t < 0 or (V is not None and t >= V)]
        if bad:
            valid = f"0..{V - 1}" if V is not None else ">= 0"
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {V} tokens; valid: {valid}")
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` decoded together (the same call on every backend)."""
        return str(self.tokenizer.decode(list(ids)))

    def encode_batch(
        self, prompts: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]] | np.ndarray, **kwargs: Any
    ) -> list[list[int]]:
        """Token ids for a prompt or a list of prompts: strings, id lists, integer arrays (a 1-D
        array or a flat id list is one prompt, a 2-D array one prompt per row).

        Raises:
            TypeError: not a prompt or a list of prompts.
            ValueError: an empty list, an empty prompt, an id outside the vocabulary.
        """
        if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
            prompts = list(prompts)
        if isinstance(prompts, (str, np.ndarray)):
            return [self.encode(prompts, **kwargs)]
        if not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a string, a list of strings or token-id lists, got {type(prompts).__name__}")
        if prompts and isinstance(prompts[0], (int, np.integer)):  # one id list
            return [self.encode(cast("Sequence[int]", prompts), **kwargs)]
        items = cast("list[str | Sequence[int]]", list(prompts))
        if not items:
            raise ValueError("empty prompt list; pass at least one prompt")
        return [self.encode(p, **kwargs) for p in items]
