"""Open-ended generation scored per cell: the judge's behaviour score, fluency (the perplexity of the
steered text under the unsteered model) and diversity (distinct-n).

Every (prompt, cell) is one row of a batched generation, each row steered by its own cell. The
generated tokens are then scored by the *unsteered* model in one more forward per batch: the
perplexity is ``exp`` of the mean negative log-likelihood of the generated tokens given the prompt
and the tokens before them, over every generated token of the cell. Distinct-n is the number of
distinct word n-grams over the total, over the cell's texts (Li et al. 2016).

With ``score_span`` the judge sees only the text of the generated tokens that selector selects
(e.g. ``"answer"``: outside the reasoning), located in each finished sequence by
:func:`~mlx_steer.engine.span_locate.locate`; perplexity and distinct-n still read every generated
token. Each generation's repetition loops (:func:`~mlx_steer.analysis.loops.find_loops`, default
settings) are counted over all its generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.loops import find_loops
from ..engine.prefix_generation import PromptPrefixes, refuse_prompt_positions
from ..engine.span_book import TokenFacts
from ..engine.span_locate import locate
from ..engine.shared_prefix import PrefixRefused
from .grid import Grid
from .judges import Judge, judge_scores

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from ..engine.results import BatchResult

__all__ = ["Generations", "distinct_n", "generation_scores", "perplexity_terms", "span_texts"]


@dataclass(frozen=True)
class Generations:
    """One cell's generations and their scores."""

    texts: tuple[str, ...]
    scores: np.ndarray  # the judge's, one per text
    nll: float  # summed negative log-likelihood of the generated tokens under the unsteered model
    n_tokens: int
    loops: tuple[int, ...] = ()  # repetition loops found in each generation

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll / self.n_tokens)) if self.n_tokens else float("nan")

    @property
    def loop_fraction(self) -> float:
        """The fraction of the generations with at least one loop (NaN when there are none)."""
        return float(np.mean([n > 0 for n in self.loops])) if self.loops else float("nan")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (lower-cased, split on whitespace); NaN
    when the texts hold no n-gram."""
    grams = [tuple(words[i: i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def perplexity_terms(model: Steerable, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
                     *, batch_size: int = 16) -> list[tuple[float, int]]:
    """Per row, (summed negative log-likelihood, count) of ``generated[i]`` after ``prompts[i]``
    under the model as it is (no steering): one forward per batch of rows (float64 log-softmax),
    its logits kept only at the positions that predict the generated tokens."""
    out: list[tuple[float, int]] = []
    for b0 in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[b0: b0 + batch_size], generated[b0: b0 + batch_size]))
        rows = [list(p) + list(g) for p, g in pairs]
        k = max(1, max(len(g) for _, g in pairs))  # a row with fewer generated tokens repeats its last position
        at = [[min(len(p) - 1 + j, len(p) + len(g) - 1) for j in range(k)] for p, g in pairs]
        logits = model.to_numpy(model.run(rows, logits=at).logits)
        for r, (p, g) in enumerate(pairs):
            if not g:
                out.append((0.0, 0))
                continue
            x = logits[r, : len(g)].astype(np.float64)  # from the position predicting the first generated token
            top = x.max(axis=-1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(x - top).sum(axis=-1))
            out.append((float(np.sum(logz - x[np.arange(len(g)), list(g)])), len(g)))
    return out


def generation_scores(model: Steerable, prompts: Sequence[str], grid: Grid, *, judge: Judge, max_tokens: int,
                      chat: bool = True, system: str | None = None, batch_size: int = 16, temp: float = 0.0,
                      seed: int = 0, shared_prefix: bool = True, score_span: object = None,
                      progress: Callable[[int], Any] | None = None) -> dict[tuple, Generations]:
    """Per distinct cell (``grid.key``), its generations over ``prompts`` and their scores.

    With ``shared_prefix`` and every cell steering only each prompt's last position and the
    generated tokens (e.g. positions ``"last"`` or ``"generated"``), each prompt but its last token
    runs once and every (prompt, cell) row generates from a copy of its cache
    (:mod:`~mlx_steer.engine.prefix_generation`): the same rows in the same batches, the same greedy
    tokens. Otherwise (or where the model's cache cannot be shared) each row runs its whole prompt.
    """
    ids = [model.encode(p, chat=chat, system=system) for p in prompts]
    distinct = grid.distinct()
    specs = {k: grid.interventions(cell) for k, cell in distinct.items()}  # built once per cell
    jobs = [(k, i) for k in distinct for i in range(len(ids))]
    tokens: dict[tuple, list[list[int]]] = {k: [] for k in distinct}
    texts: dict[tuple, list[str]] = {k: [] for k in distinct}
    prefixes = _prompt_prefixes(model, ids, list(specs.values()), max_tokens) if shared_prefix else None
    for j0 in range(0, len(jobs), batch_size):
        part = jobs[j0: j0 + batch_size]
        res = _generate(model, prefixes, ids, [i for _, i in part], max_tokens=max_tokens, temp=temp, seed=seed,
                        interventions=[specs[k] for k, _ in part])
        for (k, _), toks, text in zip(part, res.token_ids, res.texts):
            tokens[k].append(list(toks))
            texts[k].append(text)
        if progress is not None:
            progress(len(part))
    out = {}
    facts = TokenFacts(model.tokenizer)
    for k in distinct:
        terms = perplexity_terms(model, ids, tokens[k], batch_size=batch_size)
        judged = texts[k] if score_span is None else span_texts(model, ids, tokens[k], score_span, facts=facts)
        out[k] = Generations(tuple(texts[k]), judge_scores(judge, judged), sum(t for t, _ in terms),
                             sum(n for _, n in terms), tuple(len(find_loops(g)) for g in tokens[k]))
    return out


def span_texts(model: Steerable, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
               selector: object, *, facts: TokenFacts | None = None) -> list[str]:
    """Per row, the text of the generated tokens ``selector`` selects in ``prompts[i] + generated[i]``
    (decoded together, as the whole generation's text is; "" where it selects none)."""
    facts = facts or TokenFacts(model.tokenizer)
    out = []
    for p, g in zip(prompts, generated):
        mask = locate(selector, list(p) + list(g), facts=facts, prompt_len=len(p))[len(p):]
        out.append(model.prompts.decode([t for t, keep in zip(g, mask) if keep]))
    return out


def _prompt_prefixes(model: Steerable, ids: list[list[int]], specs: list[Any], max_tokens: int) -> PromptPrefixes | None:
    """The prompts' shared prefixes, or None where a cell's steering touches a prompt position
    before the last (or the model cannot share its cache): checked before anything runs."""
    lengths = np.array([len(t) for t in ids], dtype=np.int64)
    try:
        for spec in specs:
            refuse_prompt_positions(model.plan(interventions=spec), lengths, max_tokens)
        return PromptPrefixes(model, ids)
    except PrefixRefused:
        return None


def _generate(model: Steerable, prefixes: PromptPrefixes | None, ids: list[list[int]], rows: list[int], *,
              max_tokens: int, temp: float, seed: int, interventions: list[Any]) -> BatchResult:
    """One batch of rows (prompt indices ``rows``), from the shared prefixes where they serve."""
    def whole() -> BatchResult:
        return model.batch_generate([ids[i] for i in rows], max_tokens=max_tokens, temp=temp, seed=seed,
                                    interventions=interventions)

    if prefixes is None:
        return whole()
    try:
        return prefixes.batch_generate(rows, max_tokens=max_tokens, temp=temp, seed=seed, interventions=interventions)
    except PrefixRefused:  # refused before any forward (e.g. this batch size's padding is not exact)
        return whole()
