"""ActivationReader: one activation row per prompt at some sites, read in padded batches.

Shared by extraction, dataset recording and their data-parallel forms: prompts are batched in order
of token length, each row read at the position ``read`` names, and handed back as numpy in the
order of the prompts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

__all__ = ["READS", "ActivationReader", "read_options"]

READS = ("last", "mean", "assistant_start")


def read_options(read: object, *, chat: bool, system: str | None, assistant_prefix: str | None) -> dict:
    """The prompt-encoding options, after checking ``read`` and that the chat-only options come with ``chat``.

    Raises:
        ValueError: an unknown ``read`` (naming the valid ones), ``assistant_start`` without
            ``chat``, or ``system``/``assistant_prefix`` without ``chat``.
    """
    if not (read in READS or (isinstance(read, int) and not isinstance(read, bool) and read >= 0)):
        raise ValueError(f"unknown read {read!r}; valid: {', '.join(READS)} or a non-negative index")
    if read == "assistant_start" and not chat:
        raise ValueError("read='assistant_start' needs chat=True")
    unused = [k for k, v in (("system", system), ("assistant_prefix", assistant_prefix)) if v is not None]
    if unused and not chat:
        raise ValueError(f"{' and '.join(unused)} only apply to chat prompts; pass chat=True or drop them")
    return dict(chat=chat, system=system, assistant_prefix=assistant_prefix)


class ActivationReader:
    """Reads (N, D) activations per site for a list of prompts, in batches, one row per prompt
    (``read``: the last token, the mean over the prompt, an absolute index, or the start of the
    assistant turn); shows a progress bar over ``n_total`` prompts, of which this process reads
    ``n_local`` (the rest are other ranks')."""

    def __init__(self, model: Any, keys: list[str], read: str | int, batch_size: int, enc: dict, progress: bool | None,
                 *, n_total: int, n_local: int | None = None, desc: str = "extracting"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model, self.keys, self.read, self.bs, self.enc = model, keys, read, batch_size, enc
        # over several ranks the bar counts every rank's prompts, advancing with this rank's share
        self.n_total, self.n_local, self.done = n_total, n_local or n_total, 0
        n_batches = -(-n_total // batch_size)
        show = progress if progress is not None else n_batches > 4
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_total, desc=desc, unit="prompt")

    def __call__(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """(N, D) per site, rows in the order of ``prompts``.

        Prompts are batched in order of token length, so a batch pads as little as possible
        (padding is computed and thrown away; with ragged prompts it can outweigh batching). Prompts
        with the same token ids are read once and share the row: an optimized BLAS rounds a row
        differently at another place in another batch, and identical prompts must read identical
        activations (an identical contrast pair gives an exactly zero direction).
        """
        tokens = [self.model.encode(p, **self.enc) for p in prompts]
        first: dict[tuple[int, ...], int] = {}
        same = [first.setdefault(tuple(t), i) for i, t in enumerate(tokens)]  # each prompt's first twin
        copies = Counter(same)
        order = sorted(copies, key=lambda i: len(tokens[i]))
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(order), self.bs):
            rows = order[i : i + self.bs]
            for k, arr in self._read([prompts[r] for r in rows], [tokens[r] for r in rows]).items():
                if k not in out:
                    out[k] = np.empty((len(prompts),) + arr.shape[1:], dtype=arr.dtype)
                out[k][rows] = arr
            if self.bar is not None:
                self.done += sum(copies[r] for r in rows)
                self.bar.update(self.done * self.n_total // self.n_local - self.bar.n)
        return {k: a if len(copies) == len(prompts) else a[same] for k, a in out.items()}

    def _read(self, prompts: list[str], tokens: list[list[int]]) -> dict[str, np.ndarray]:
        m, read, keys = self.model, self.read, self.keys
        if read == "last":
            tr = m.run(tokens, record=keys, record_positions="last", logits=False)
            return {k: m.to_numpy(tr.activations[k])[:, -1] for k in keys}
        if read == "mean":
            tr = m.run(tokens, record=keys, record_positions="prompt", reduce="mean", logits=False)
            return {k: m.to_numpy(tr.activations[k]) for k in keys}
        if isinstance(read, int):
            short = min(len(t) for t in tokens)
            if read >= short:
                raise ValueError(f"read index {read} out of range for a prompt of {short} tokens; valid: 0..{short - 1}")
            tr = m.run(tokens, record=keys, record_positions=[read], logits=False)
            return {k: m.to_numpy(tr.activations[k])[:, 0] for k in keys}
        # assistant_start: the first token of the assistant turn (the prefix's first token)
        turn = [len(m.encode(p, chat=True, system=self.enc["system"])) for p in prompts]
        idx = [min(s, len(t) - 1) for s, t in zip(turn, tokens)]
        tr = m.run(tokens, record=keys, logits=False)
        acts = {k: m.to_numpy(tr.activations[k]) for k in keys}
        return {k: np.stack([a[b, tr.padding[b] + i] for b, i in enumerate(idx)]) for k, a in acts.items()}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
