"""Test helpers for span selectors: an independent offline locator and a logits processor that
forces chosen tokens at chosen steps (so spans open and close while generating).

The locator searches the whole decoded text at once (a marker's completing token is the one
holding its last character) and walks the completions in order; the engine instead matches
token by token as forwards commit them. Both follow the rules in ``mlx_steer.engine.spans``.
"""

from __future__ import annotations

import numpy as np


def _ends(tokens, marker, text_of):
    """Token indices at which ``marker`` (text or a list of ids) completes, with a tiebreak key."""
    if isinstance(marker, str):
        pieces = [text_of(t) for t in tokens]
        text = "".join(pieces)
        owner = np.repeat(np.arange(len(tokens)), [len(p) for p in pieces])
        out, i = [], text.find(marker)
        while i >= 0:
            end = i + len(marker) - 1
            out.append((int(owner[end]), end))
            i = text.find(marker, i + 1)
        return out
    m = list(marker)
    return [(j + len(m) - 1, j + len(m) - 1) for j in range(len(tokens) - len(m) + 1) if list(tokens[j:j + len(m)]) == m]


def inside(tokens, open, close, text_of, *, from_token=0):
    """Sorted positions inside ``open`` … ``close`` (``close=None``: after ``open``)."""
    events = [(t, key, 1) for t, key in _ends(tokens, open, text_of)]
    if close is not None:
        events += [(t, key, 0) for t, key in _ends(tokens, close, text_of)]
    events.sort(key=lambda e: (e[1], e[2]))  # text order; a close before an open at the same character
    state, opened_at, closed_at = False, [], []
    for t, _, opens in events:
        if opens and not state:
            state = True
            opened_at.append(t)
        elif not opens and state:
            state = False
            closed_at.append(t)
    out = []
    for k, o in enumerate(opened_at):
        stop = closed_at[k] if k < len(closed_at) else len(tokens) - 1  # the closing token is inside
        span = list(range(o + 1, stop + 1))
        out += span[from_token:]
    return sorted(set(out))


def forcing(schedule, to_list):
    """A logits processor: ``schedule`` maps a prompt (tuple of ids) to {step: token}; at that
    generated step the token is forced. ``to_list`` turns the processor's context into ids."""

    def processor(context, logits):
        ctx = to_list(context)
        for prompt, steps in schedule.items():
            if tuple(ctx[: len(prompt)]) == prompt and len(ctx) - len(prompt) in steps:
                tok = steps[len(ctx) - len(prompt)]
                bias = np.full(logits.shape, -1e9, dtype=np.float32)
                bias[..., tok] = 0.0
                return logits + _like(bias, logits)
        return logits

    return processor


def _like(host, like):
    if type(like).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(host, dtype=like.dtype, device=like.device)
    import mlx.core as mx

    return mx.array(host).astype(like.dtype)


def to_list(context):
    if type(context).__module__.startswith("torch"):
        return context.tolist()
    return np.array(context).reshape(-1).tolist()
