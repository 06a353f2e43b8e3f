"""An A/B item's two answers as continuations of its prompt, scored the way lm-eval scores multiple
choice: each answer's log-likelihood is the sum of its continuation tokens' log-probabilities,
however the tokenizer splits ``"(A"`` (qwen2-family tokenizers make it one token, SmolLM2's two).

The prompt is the item up to the assistant's reply (with ``chat``) or ``"<question>\\n\\nAnswer:"``;
an answer's continuation is ``"(" + letter`` (``" (" + letter`` without chat). Its tokens are those
of the full text beyond the prompt's tokens: the full text is tokenized whole and split where the
prompt's tokens end. Where the prompt's tokens are not a prefix of the full text's (a merge across
the boundary), the continuation is tokenized on its own and appended to the prompt's tokens (what
lm-eval does for every item).

One forward row scores an answer: the row is the answer's sequence without its last token (the
logits at its positions ``P-1 ..`` predict each continuation token). When both answers' sequences
differ only in their last token (``"(", "A"`` / ``"(", "B"``; ``"(A"`` / ``"(B"``), one row serves
both; otherwise each answer has its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .items import ABItem

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["ANSWER_PREFIX", "ABSequences", "ab_sequences"]

ANSWER_PREFIX = "("


@dataclass(frozen=True)
class ABSequences:
    """One item's prompt and its two answers' full token sequences.

    Attributes:
        prompt: The item up to the assistant's reply (no answer text).
        matching: ``prompt`` + the matching answer's continuation tokens.
        not_matching: ``prompt`` + the other answer's continuation tokens.
    """

    prompt: list[int]
    matching: list[int]
    not_matching: list[int]

    @property
    def common(self) -> int:
        """Length of the longest common prefix of the two answers' sequences (>= the prompt's)."""
        n = 0
        for a, b in zip(self.matching, self.not_matching):
            if a != b:
                break
            n += 1
        return n

    @property
    def rows(self) -> list[list[int]]:
        """The forward rows that score both answers: one when the sequences differ only in their
        last token, else one per answer (matching first)."""
        m, n = self.matching[:-1], self.not_matching[:-1]
        return [m] if m == n else [m, n]

    @property
    def steer_from(self) -> int:
        """The first steered position: the last token common to both answers' sequences (the
        ``"("`` where the tokenizer splits it off, the last prompt token where it merges ``"(A"``)."""
        return self.common - 1


def ab_sequences(model: Steerable, item: ABItem, *, chat: bool = True, system: str | None = None) -> ABSequences:
    """The prompt and both answers' sequences of ``item`` (see the module docstring)."""
    if chat:
        prompt = model.encode(item.question, chat=True, system=system)
        full = [model.encode(item.question, chat=True, system=system, assistant_prefix=ANSWER_PREFIX + letter)
                for letter in (item.matching, item.not_matching)]
        texts = [ANSWER_PREFIX + letter for letter in (item.matching, item.not_matching)]
    else:
        prompt = model.encode(f"{item.question}\n\nAnswer:")
        full = [model.encode(f"{item.question}\n\nAnswer: {ANSWER_PREFIX}{letter}")
                for letter in (item.matching, item.not_matching)]
        texts = [f" {ANSWER_PREFIX}{letter}" for letter in (item.matching, item.not_matching)]
    seqs = [ids if len(ids) > len(prompt) and ids[: len(prompt)] == prompt
            else prompt + model.prompts.check_ids(list(model.tokenizer.encode(text, add_special_tokens=False)))
            for ids, text in zip(full, texts)]
    if seqs[0] == seqs[1]:
        raise ValueError(f"the answers {item.matching!r} and {item.not_matching!r} tokenize the same; "
                         "A/B items need answers the tokenizer tells apart")
    return ABSequences(prompt, seqs[0], seqs[1])

