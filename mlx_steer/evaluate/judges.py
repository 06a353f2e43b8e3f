"""Judges score generated texts for a behaviour: ``judge(texts) -> one float per text``.

Any callable of that form is a judge (an LLM grader, a classifier...). Shipped: a lexicon sentiment
judge (VADER's compound score, -1 most negative .. +1 most positive, from the maintained
``vaderSentiment`` package) and a substring judge (1 when a text contains one of the substrings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Judge", "judge_scores", "sentiment_judge", "substring_judge"]

Judge = Callable[[Sequence[str]], Sequence[float]]


def sentiment_judge() -> Judge:
    """VADER's compound sentiment per text (-1 .. +1).

    Raises:
        ImportError: ``vaderSentiment`` is missing (``pip install vaderSentiment``, or the ``eval`` extra).
    """
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError("the sentiment judge needs vaderSentiment: pip install vaderSentiment") from exc
    analyzer = SentimentIntensityAnalyzer()

    def sentiment(texts: Sequence[str]) -> list[float]:
        return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]

    return sentiment


def substring_judge(substrings: Sequence[str] | str, *, case_sensitive: bool = False) -> Judge:
    """1.0 for a text that contains any of ``substrings``, else 0.0.

    Raises:
        ValueError: no substrings, or an empty one.
    """
    words = [substrings] if isinstance(substrings, str) else list(substrings)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"substring_judge needs non-empty strings, got {substrings!r}")
    wanted = words if case_sensitive else [w.lower() for w in words]

    def contains(texts: Sequence[str]) -> list[float]:
        return [float(any(w in (t if case_sensitive else t.lower()) for w in wanted)) for t in texts]

    return contains


def judge_scores(judge: Judge, texts: Sequence[str]) -> np.ndarray:
    """``judge(texts)`` as a float64 array, checked: one finite number per text.

    Raises:
        TypeError: the judge is not callable.
        ValueError: it returned another count of scores, or a score that is not a finite number.
    """
    if not callable(judge):
        raise TypeError(f"a judge must be a callable texts -> scores, got {type(judge).__name__}")
    scores = judge(list(texts))
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the judge must return one number per text, got {scores!r:.200}") from exc
    if arr.shape != (len(texts),):
        raise ValueError(f"the judge returned {arr.size} score(s) of shape {arr.shape} for {len(texts)} texts; "
                         "it must return one number per text")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"the judge returned non-finite scores: {arr[~np.isfinite(arr)][:5].tolist()}")
    return arr
