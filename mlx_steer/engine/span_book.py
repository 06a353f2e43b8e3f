"""Span selectors resolved per row from the tokens each row has committed.

The position tracker hands every forward's input tokens to the book. A row's history is the tokens
at its absolute positions 0, 1, ...; a forward starting at position 0 starts a new history, one
that starts inside a history rewrites it from there. Histories are kept per row key and per KV
cache (a prompt cache reused across turns keeps its rows' spans), per sequence in continuous
batching. A span mask at position ``p`` reads tokens before ``p`` only, so a decode step never
waits for the token it is computing; ``special`` reads the token itself, and a one-token forward
computes that on the device (:meth:`SpanBook.device_mask`).
Tokens of the current forward are read on the host when it has several (a prompt); a decode
step's token is committed at the next forward, when the generation loop has computed it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .span_markers import Marker, SpanTrace
from .span_nodes import And, Between, Index, Node, Not, Or, Reasoning, Special, needs_current_tokens

if TYPE_CHECKING:
    from .arrays import ArrayOps

# reasoning conventions: (opening, closing) markers as single added tokens, or as text
THINK_TOKENS = (("<think>", "</think>"), ("<thinking>", "</thinking>"),
                ("<|begin_of_thought|>", "<|end_of_thought|>"), ("<|START_THINKING|>", "<|END_THINKING|>"))
HARMONY = ("<|channel|>analysis<|message|>", "<|end|>")  # gpt-oss: the analysis channel


class TokenFacts:
    """What spans need of a tokenizer: each token's text, the special ids, the reasoning markers."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}
        self._special: np.ndarray | None = None
        self._reasoning: tuple[Marker, Marker] | None | bool = False

    def text_of(self, token: int) -> str:
        t = self._text.get(token)
        if t is None:
            t = self._text[token] = str(self.tokenizer.decode([token]))
        return t

    @property
    def special_ids(self) -> np.ndarray:
        if self._special is None:
            tok = self.tokenizer
            ids = set(getattr(tok, "all_special_ids", None) or [])
            for i, added in (getattr(tok, "added_tokens_decoder", None) or {}).items():
                if getattr(added, "special", False):
                    ids.add(int(i))
            self._special = np.array(sorted(ids), dtype=np.int64)
        return self._special

    @property
    def reasoning(self) -> tuple[Marker, Marker] | None:
        if self._reasoning is False:
            self._reasoning = reasoning_markers(self.tokenizer)
        return self._reasoning  # type: ignore[return-value]


def reasoning_markers(tokenizer: Any) -> tuple[Marker, Marker] | None:
    """The markers around the model's reasoning, from its vocabulary's conventions: a ``<think>``
    / ``</think>`` pair (or another known pair) of single tokens, else gpt-oss's analysis channel;
    None when the tokenizer has neither."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for o, c in THINK_TOKENS:
        if o in vocab and c in vocab:
            return Marker(ids=(int(vocab[o]),)), Marker(ids=(int(vocab[c]),))
    if all(t in vocab for t in ("<|channel|>", "<|message|>", "<|end|>")):
        return Marker(text=HARMONY[0]), Marker(text=HARMONY[1])
    return None


class RowHistory:
    """One row's committed tokens and, per span node, its trace over them."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.traces: dict[Node, SpanTrace] = {}

    def write(self, start: int, tokens: list[int]) -> None:
        """The tokens at absolute positions ``start``, ``start + 1``, ... (unknown ones before: -1)."""
        n = len(self.tokens)
        if start > n:
            self.tokens += [-1] * (start - n)
        elif self.tokens[start : start + len(tokens)] == tokens:
            return  # already known (a token committed again, a rewound cache fed the same tokens)
        del self.tokens[start:]
        self.tokens += tokens
        # a trace that read past ``start`` read other (or unknown) tokens there
        for k in [k for k, tr in self.traces.items() if tr.processed > start]:
            del self.traces[k]

    def trace(self, node: Node, make: Callable[[], SpanTrace], upto: int) -> SpanTrace:
        """The node's trace, advanced over the tokens before position ``upto``."""
        tr = self.traces.get(node)
        if tr is None:
            tr = self.traces[node] = make()
        if tr.processed < upto:
            known = self.tokens[tr.processed : upto]
            tr.advance(known + [-1] * (upto - tr.processed - len(known)))  # unknown: matches nothing
        return tr


class SpanBook:
    """Per-row token histories and span masks for one model's position state."""

    def __init__(self, facts: TokenFacts, xp: ArrayOps):
        self.facts, self.xp = facts, xp
        self._by_cache: weakref.WeakKeyDictionary[Any, dict[int, RowHistory]] = weakref.WeakKeyDictionary()
        self._uncached: dict[int, RowHistory] = {}
        self._pending: tuple[list[RowHistory], np.ndarray, Any] | None = None
        self._rows: list[RowHistory] = []
        self._host: np.ndarray | None = None  # the current forward's tokens, once read

    def begin(self, pos: np.ndarray, keys: np.ndarray, tokens: Any, table: dict[int, RowHistory] | None,
              anchor: Any) -> None:
        """A forward over rows ``keys`` at positions ``pos`` (B, L) with input ``tokens`` (B, L) or
        None; ``table`` holds the rows of a continuous batch, else rows are kept per cache ``anchor``."""
        self.commit()
        if table is None:
            table = self._uncached if anchor is None else self._by_cache.setdefault(anchor, {})
        self._rows = [table.get(k) or table.setdefault(k, RowHistory()) for k in keys.tolist()]
        self._host = None
        self._pending = (self._rows, pos[:, 0].copy(), tokens)
        if tokens is not None:  # its own event: read at the next forward without waiting for this one
            self.xp.schedule([tokens])

    def commit(self) -> None:
        """Write the previous forward's tokens into its rows' histories (computed by now)."""
        if self._pending is None:
            return
        rows, starts, tokens = self._pending
        self._pending = None
        host = self._host if self._host is not None else self._read(tokens, len(rows))
        for r, s, t in zip(rows, starts, host):
            keep = t[max(0, -int(s)):]  # drop left padding
            r.write(max(int(s), 0), keep.tolist())

    def _read(self, tokens: Any, batch: int) -> np.ndarray:
        if tokens is None:  # input embeddings: tokens unknown
            return np.full((batch, 1), -1, dtype=np.int64)
        host = np.asarray(self.xp.ids_to_numpy(tokens), dtype=np.int64)
        return host.reshape(batch, -1)

    def mask(self, node: Node, pos: np.ndarray, index_mask: Callable[[Any], np.ndarray]) -> np.ndarray:
        """Boolean (B, L) mask of ``node`` for the current forward."""
        B, L = pos.shape
        if self._pending is not None and (L > 1 or needs_current_tokens(node)):
            if self._host is None:
                self._host = self._read(self._pending[2], B)
            if L > 1:  # the prompt's tokens decide its own later positions
                self.commit()
        return self._eval(node, pos, index_mask)

    def device_mask(self, node: Node, pos: np.ndarray, index_mask: Callable[[Any], np.ndarray], *, like: Any) -> Any:
        """The (B, 1, 1) mask of a one-token forward whose own token ``node`` reads (``special``),
        computed where the token is: a decode step then need not wait for the token it runs on.
        None where the host mask serves (a prompt, a token already read, no token ids)."""
        if pos.shape[1] != 1 or self._host is not None or self._pending is None or self._pending[2] is None \
                or not needs_current_tokens(node):
            return None
        return self._mixed(node, pos, index_mask, like)

    def _mixed(self, node: Node, pos: np.ndarray, index_mask: Callable[[Any], np.ndarray], like: Any) -> Any:
        """A host (B, L) mask where ``node`` reads no current token, else a device (B, L, 1) one."""
        if not needs_current_tokens(node):
            return self._eval(node, pos, index_mask)
        xp, real = self.xp, (pos >= 0)[..., None]
        if isinstance(node, Special):
            assert self._pending is not None
            found = xp.token_mask(self._pending[2], self.facts.special_ids, like=like)
            return found if real.all() else xp.logical("and", found, xp.mask(real, like=like))
        if isinstance(node, Not):
            inner = xp.logical("not", self._mixed(node.inner, pos, index_mask, like))
            return inner if real.all() else xp.logical("and", inner, xp.mask(real, like=like))
        assert isinstance(node, (And, Or))
        op = "and" if isinstance(node, And) else "or"
        parts = [self._mixed(p, pos, index_mask, like) for p in node.parts]
        host = [p for p in parts if isinstance(p, np.ndarray)]
        out = None
        if host:
            joined = np.logical_and.reduce(host) if op == "and" else np.logical_or.reduce(host)
            out = xp.mask(joined[..., None], like=like)
        for p in parts:
            if not isinstance(p, np.ndarray):
                out = p if out is None else xp.logical(op, out, p)
        return out

    def _eval(self, node: Node, pos: np.ndarray, index_mask: Callable[[Any], np.ndarray]) -> np.ndarray:
        real = pos >= 0
        if isinstance(node, Index):
            return index_mask(node.positions)
        if isinstance(node, Not):
            return real & ~self._eval(node.inner, pos, index_mask)
        if isinstance(node, And):
            return np.logical_and.reduce([self._eval(p, pos, index_mask) for p in node.parts])
        if isinstance(node, Or):
            return np.logical_or.reduce([self._eval(p, pos, index_mask) for p in node.parts])
        if isinstance(node, Special):
            host = self._host if self._host is not None else np.full(pos.shape, -1)
            return real & np.isin(host.reshape(pos.shape), self.facts.special_ids)
        if isinstance(node, Reasoning):
            markers = self.facts.reasoning
            if markers is None:
                return np.zeros(pos.shape, dtype=bool)
            return self._between(Between(markers[0], markers[1], node.from_token), pos)
        assert isinstance(node, Between)
        return self._between(node, pos)

    def _between(self, node: Between, pos: np.ndarray) -> np.ndarray:
        out = np.zeros(pos.shape, dtype=bool)
        make = lambda: SpanTrace(node.open, node.close, self.facts.text_of)  # noqa: E731
        for b, row in enumerate(self._rows):
            p = pos[b]
            real = p[p >= 0]
            if not real.size:
                continue
            tr = row.trace(node, make, int(real[-1]))
            out[b, p >= 0] = [tr.inside[i] and tr.count[i] >= node.from_token for i in real.tolist()]
        return out


def anchor_of(cache: Any) -> Any:
    """The object that names a KV cache: its first layer's cache (a list's items outlive the list
    a backend passes), or the cache itself."""
    if cache is None:
        return None
    if isinstance(cache, (list, tuple)):
        return cache[0] if cache else None
    return cache
