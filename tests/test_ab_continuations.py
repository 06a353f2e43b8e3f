"""A/B scoring as whole continuations (lm-eval's multiple choice), whatever the tokenizer makes of
``"(A"``: on a tiny model with the tiny tokenizer (which splits ``"("`` from the letter), with one
that merges ``"(A"`` and ``"(B"`` into single tokens, and with one that merges ``"(A"`` only (the two
answers then have different token counts and are scored on their own rows). The oracle tokenizes
with the bare HF tokenizer, runs each answer's full sequence solo (steered from the answers' last
common token on) and sums a numpy log-softmax over the vocabulary at each continuation token."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import tiny_models
from mlx_steer import evaluate as ev
from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)

BACKENDS = ["mlx", "torch"]
TOKENIZERS = ["split", "merged", "merged_a_only"]
ITEMS = [
    {"question": "Do you like the cat?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(A)", "answer_not_matching": "(B)"},
    {"question": "Is the day long?\n\nChoices:\n (A) No\n (B) Yes", "answer_matching": "(B)", "answer_not_matching": "(A)"},
    {"question": "The dog ran home. Agree?", "answer_matching": "A", "answer_not_matching": "B"},
]


def _tokenizer(merged: tuple[str, ...]):
    """The tiny byte-level BPE, trained two tokens short so ``merged`` fit the model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tiny_models.VOCAB - 2, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_models.CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_tokens(list(merged))
    fast.chat_template = tiny_models.CHAT_TEMPLATE
    assert len(fast) <= tiny_models.VOCAB
    return fast


@pytest.fixture(scope="module")
def variant_dir(tiny_dir, tmp_path_factory):
    """variant_dir(kind) -> the tiny llama with the ``kind`` tokenizer."""
    made = {}

    def get(kind: str):
        if kind == "split":
            return tiny_dir("llama")
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"llama_{kind}")
            shutil.copytree(tiny_dir("llama"), folder, dirs_exist_ok=True)
            for f in folder.glob("tokenizer*"):
                f.unlink()
            _tokenizer(("(A", "(B") if kind == "merged" else ("(A",)).save_pretrained(folder)
            made[kind] = folder
        return made[kind]

    return get


@pytest.fixture(scope="module")
def variant_model(variant_dir):
    cache = {}

    def get(backend: str, kind: str):
        if (backend, kind) not in cache:
            if backend == "mlx":
                import mlx_steer as ms

                cache[(backend, kind)] = ms.load(str(variant_dir(kind)))
            else:
                from mlx_steer.torch_backend import load

                cache[(backend, kind)] = load(str(variant_dir(kind)))
        return cache[(backend, kind)]

    return get


def _hand_tokens(hf, item: ev.ABItem):
    """(prompt ids, [matching ids, not-matching ids]) from the bare HF tokenizer: the template's text
    tokenized whole, with and without the answer ``"(" + letter``."""
    text = hf.apply_chat_template([{"role": "user", "content": item.question}], tokenize=False,
                                  add_generation_prompt=True)
    prompt = hf(text, add_special_tokens=False)["input_ids"]
    full = [hf(text + "(" + letter, add_special_tokens=False)["input_ids"] for letter in (item.matching, item.not_matching)]
    for ids in full:
        assert ids[: len(prompt)] == prompt  # this template ends on a special token: the prompt is a prefix
    return prompt, full


def _hand_probability(m, hf, item, direction=None, layer=None, strength=0.0):
    """p(m) / (p(m) + p(n)) of the two continuations, each from a solo forward of its whole sequence
    (steered from the last token common to both sequences on) and a numpy log-softmax."""
    prompt, full = _hand_tokens(hf, item)
    common = 0  # how many leading tokens the two sequences share
    while full[0][common] == full[1][common]:
        common += 1
    ll = []
    for ids in full:
        spec = None if not strength else {f"layers.{layer}": iv.add_vector(direction, scale=strength,
                                                                           positions=range(common - 1, len(ids)))}
        x = m.to_numpy(m.run([ids], interventions=spec).logits)[0].astype(np.float64)
        logp = x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        ll.append(sum(logp[p - 1, ids[p]] for p in range(len(prompt), len(ids))))
    return 1.0 / (1.0 + np.exp(ll[1] - ll[0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", TOKENIZERS)
def test_ab_probabilities_equal_the_continuations_likelihoods(variant_model, variant_dir, backend, kind):
    from transformers import AutoTokenizer

    m = variant_model(backend, kind)
    hf = AutoTokenizer.from_pretrained(str(variant_dir(kind)))
    items = ev.as_items(ITEMS)
    # the tokenizers do what their names say
    a, b = (hf("(" + c, add_special_tokens=False)["input_ids"] for c in "AB")
    assert (len(a), len(b)) == {"split": (2, 2), "merged": (1, 1), "merged_a_only": (1, 2)}[kind]
    rows = [len(ev.ab_prompt(m, it).rows) for it in items]
    assert rows == ([2, 2, 2] if kind == "merged_a_only" else [1, 1, 1])
    vec = np.random.default_rng(3).standard_normal(m.hidden_size).astype(np.float32)
    grid = ev.Grid(m, vector=vec, layers=[1, 2], strengths=[-4.0, 0.0, 4.0], positions="last")
    for share in (True, False):
        got = ev.ab.ab_scores(m, items, grid, batch_size=5, share_layers=share)
        for key, cell in grid.distinct().items():
            want = [_hand_probability(m, hf, it, grid.direction(cell.vector, cell.layer), cell.layer, cell.strength)
                    for it in items]
            np.testing.assert_allclose(got[key], want, atol=2e-6, rtol=0, err_msg=f"{kind} {key} share={share}")
    # the evaluation's table holds their means
    table = ev.evaluate(m, vector=vec, layers=[1], strengths=[4.0], items=items, batch_size=4, progress=False)
    want = np.mean([_hand_probability(m, hf, it, vec, 1, 4.0) for it in items])
    assert table.cell(1, 4.0).ab_probability == pytest.approx(want, abs=2e-6)


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_the_vector_is_read_at_each_answers_last_token(variant_model, variant_dir, kind):
    from transformers import AutoTokenizer

    m = variant_model("mlx", kind)
    hf = AutoTokenizer.from_pretrained(str(variant_dir(kind)))
    items = ev.as_items(ITEMS)
    vec = ev.ab_vector(m, items, layers=[2], progress=False)
    diffs = []
    for it in items:
        _, full = _hand_tokens(hf, it)
        acts = [m.to_numpy(m.run([ids], record=["layers.2"], logits=False).activations["layers.2"])[0, -1] for ids in full]
        diffs.append(acts[0] - acts[1])
    np.testing.assert_allclose(vec.directions[m.resolve_path("layers.2")], np.mean(diffs, axis=0), rtol=1e-4, atol=1e-5)


def test_answers_the_tokenizer_cannot_tell_apart_are_refused(shared_models):
    m = shared_models("llama")

    class Same:  # a tokenizer view where every answer text encodes the same
        def __getattr__(self, name):
            return getattr(m, name)

        def encode(self, text, **kwargs):
            ids = m.encode(text, **kwargs)
            return ids[:-1] + [5] if kwargs.get("assistant_prefix") else ids

    with pytest.raises(ValueError, match="answers 'A' and 'B' tokenize the same"):
        ev.ab_prompt(Same(), ev.ABItem("q", "A", "B"))


def test_a_prompt_that_is_not_a_prefix_falls_back_to_the_continuation_alone(shared_models):
    """Where the full text's tokens do not start with the prompt's (a merge across the boundary), the
    continuation is tokenized on its own and appended to the prompt's tokens (lm-eval's rule)."""
    m = shared_models("llama")

    class Tokenizer:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) % 50 for c in text]

    class Merging:  # the prompt ends in 3; with an answer after it, the boundary merges into 7
        tokenizer, prompts = Tokenizer(), m.prompts

        def encode(self, text, **kwargs):
            return [1, 2, 7, 8] if kwargs.get("assistant_prefix") else [1, 2, 3]

    seqs = ev.ab_prompt(Merging(), ev.ABItem("q", "A", "B"))
    assert seqs.prompt == [1, 2, 3]
    assert seqs.matching == [1, 2, 3, ord("(") % 50, ord("A") % 50]
    assert seqs.not_matching == [1, 2, 3, ord("(") % 50, ord("B") % 50]
    assert seqs.steer_from == 3 and seqs.rows == [seqs.matching[:-1]]
