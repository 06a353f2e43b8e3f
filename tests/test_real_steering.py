"""On the real SmolLM2-135M-Instruct: a love - hate vector moves positive-word log-probs monotonically."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer.demo import NEGATIVE, POSITIVE

pytestmark = pytest.mark.slow

NEUTRAL = "I think that my neighbour is"
POSITIVE_WORDS = [" good", " happy", " wonderful", " great", " lovely", " beautiful", " kind", " amazing"]
LAYER = "layers.5"


def positive_logprob(model, interventions) -> float:
    ids = [model.tokenizer.encode(w, add_special_tokens=False)[0] for w in POSITIVE_WORDS]
    logits = model.run(NEUTRAL, interventions=interventions).logits[0, -1]
    logprobs = np.array(logits - mx.logsumexp(logits))
    return float(logprobs[ids].mean())


def test_sentiment_steering_is_monotonic(smollm2):
    vec = ms.extract(smollm2, POSITIVE, NEGATIVE, sites=[LAYER], method="mean_diff", read="mean")
    strengths = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    scores = [positive_logprob(smollm2, vec.to_interventions(scale=s) if s else None) for s in strengths]
    print("strength -> mean log-prob of positive words:", dict(zip(strengths, np.round(scores, 3))))
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
