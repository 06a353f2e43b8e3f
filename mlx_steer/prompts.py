"""Prompt encoding shared by both backends: plain text, token ids, or chat turns via the template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PromptEncoder:
    """Encodes prompts the way mlx-lm's ``stream_generate`` does (BOS unless the text has it).

    Args:
        tokenizer: an HF tokenizer or mlx-lm ``TokenizerWrapper``.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

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
        prompt: str | Sequence[int],
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
            ids = list(self.tokenizer.encode(text, add_special_tokens=special))
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` decoded together (the same call on every backend)."""
        return str(self.tokenizer.decode(list(ids)))

    def encode_batch(self, prompts: str | Sequence[str] | Sequence[Sequence[int]], **kwargs: Any) -> list[list[int]]:
        """Token ids for a prompt or a list of prompts (strings or id lists)."""
        if isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)
        ):
            return [self.encode(prompts, **kwargs)]  # type: ignore[arg-type]
        items = list(prompts)
        if not items:
            raise ValueError("empty prompt list; pass at least one prompt")
        return [self.encode(p, **kwargs) for p in items]
