"""Head scores (``mlx_steer.heads.scores``): each score equals the same mean computed by hand from
transformers' eager attention on the same tokens; on a GPT-2 whose weights are set by hand so that
one layer-0 head attends to the previous token and one layer-1 head is an induction head, the scores
rank those heads first (their own patterns checked first); the table's outputs; ``mlx-steer heads
scores``; and the measured SmolLM2 heads (slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlx_steer.cli import main
from mlx_steer.heads import (HeadScoreTable, attention_patterns, head_scores, induction_scores, previous_token_scores,
                             repeated_random_tokens, sink_scores)
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # fp32, against transformers' eager attention

# -- the planted model ---------------------------------------------------------------------------
D, N_POS, HEADS, DH = 256, 64, 4, 64  # hidden = 4 subspaces of 64: positions, tokens, copied tokens, spare
PREV_HEAD, INDUCTION_HEAD = (0, 1), (1, 2)  # (layer, head)
P, T, C = slice(0, 64), slice(64, 128), slice(128, 192)


def build_planted(folder: Path) -> Path:
    """A 2-layer GPT-2 (hidden 256, 4 heads of 64, 64 positions, tiny tokenizer) with hand-set weights.

    Position ``p`` embeds as ``8·e_p`` in dims 0..63, token ``t`` as a random vector of norm 8 in dims
    64..127. Layer 0 head 1: its query reads the position one-hot, its key the position one-hot shifted
    by one (``q_i·k_j`` is large iff ``j = i - 1``), its value the token dims, written by the output
    projection into dims 128..191: each position then holds its previous token there. Layer 1 head 2:
    query reads the current token (64..127), key the copied previous token (128..191): position ``i``
    attends to ``j`` iff token ``j - 1`` equals token ``i``, the induction pattern. The other heads
    are small random weights, the MLPs zero.
    """
    import transformers as tf

    import tiny_models

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    g = torch.Generator().manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=tiny_models.VOCAB, n_embd=D, n_layer=2, n_head=HEADS, n_positions=N_POS,
                        n_ctx=N_POS, bos_token_id=1, eos_token_id=2)  # type: ignore[call-arg]  # mlx-lm reads n_ctx
    model = tf.GPT2LMHeadModel(cfg).eval()
    s = 3.0  # q/k gain
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tr = model.transformer
        for ln in [tr.ln_f] + [m for b in tr.h for m in (b.ln_1, b.ln_2)]:
            ln.weight.fill_(1.0)
        tok = torch.randn(tiny_models.VOCAB, DH, generator=g)
        tr.wte.weight[:, T] = 8.0 * tok / tok.norm(dim=1, keepdim=True)
        tr.wpe.weight[:, P] = 8.0 * torch.eye(N_POS)
        eye = torch.eye(DH)
        for layer, block in enumerate(tr.h):
            w = block.attn.c_attn.weight  # Conv1D (in, out): [Q | K | V], head h at columns h*64..
            w.normal_(0.0, 0.02, generator=g)
            block.attn.c_proj.weight.normal_(0.0, 0.02, generator=g)
            h = PREV_HEAD[1] if layer == 0 else INDUCTION_HEAD[1]
            q, k, v = (slice(part * D + h * DH, part * D + (h + 1) * DH) for part in range(3))
            for cols in (q, k, v):
                w[:, cols] = 0.0
            if layer == 0:
                w[P, q] = s * eye
                w[P, k] = s * torch.diag(torch.ones(DH - 1), 1)  # position j -> key dim j + 1
                w[T, v] = eye
                block.attn.c_proj.weight[h * DH:(h + 1) * DH] = 0.0
                block.attn.c_proj.weight[h * DH:(h + 1) * DH, C] = eye
            else:
                w[T, q] = s * eye
                w[C, k] = s * eye
    model.save_pretrained(folder)
    tiny_models.build_tokenizer().save_pretrained(folder)
    tiny_models._strip_gpt2_prefix(folder)
    return folder


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    return build_planted(tmp_path_factory.mktemp("planted") / "gpt2")


@pytest.fixture(scope="module")
def planted(planted_dir):
    """planted(backend) -> the planted model loaded by that backend (shared: do not mutate)."""
    import mlx_steer as ms

    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            cache[backend] = ms.load(str(planted_dir), backend=backend)
        return cache[backend]

    return get


# -- oracle: transformers' eager attention, scores by explicit loops -------------------------------
def eager_patterns(folder: Path, seqs: list[list[int]]) -> list[list[np.ndarray]]:
    """Per sequence (run alone), per layer, its (H, n, n) eager attention."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return [[a[0].numpy() for a in hf(input_ids=torch.tensor([s]), output_attentions=True,
                                          use_cache=False).attentions] for s in seqs]


def by_hand(eager: list[list[np.ndarray]], seqs: list[list[int]], kind: str, *, length: int = 0,
            token: int | None = None) -> dict[tuple[int, int], float]:
    out = {}
    for layer in range(len(eager[0])):
        for h in range(eager[0][0].shape[0]):
            vals = []
            for pats, seq in zip(eager, seqs):
                a, n = pats[layer][h], len(seq)
                for i in range(1, n):
                    if kind == "previous":
                        vals.append(a[i, i - 1])
                    elif kind == "induction" and i >= n - length:
                        vals.append(a[i, i - length + 1])
                    elif kind == "sink" and token is None:
                        vals.append(a[i, 0])
                    elif kind == "sink" and token in seq[:i]:
                        vals.append(sum(a[i, j] for j in range(i) if seq[j] == token))
            out[(layer, h)] = float(np.mean(vals))
    return out


def as_dict(table: HeadScoreTable) -> dict[tuple[int, int], float]:
    return {(r.layer, r.head): r.score for r in table.rows}


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_equal_eager_attention_by_hand(backend_models, tiny_dir, backend):
    m = backend_models(backend, "llama")
    prompts = ["I love this wonderful day", "Tell me a story about a cat who lives on a boat", "hi"]
    seqs = [m.encode(p) for p in prompts]
    rand = repeated_random_tokens(m, length=7, batch=3, seed=5)
    assert all(len(s) == 15 and s[0] == 1 and s[1:8] == s[8:] for s in rand)
    assert not set(x for s in rand for x in s[1:]) & set(m.tokenizer.all_special_ids)
    token = seqs[0][2]  # occurs in the first prompt only
    eager = eager_patterns(tiny_dir("llama"), rand + seqs)
    er, ep = eager[:3], eager[3:]
    cases = [(induction_scores(m, length=7, batch=3, seed=5), by_hand(er, rand, "induction", length=7)),
             (previous_token_scores(m, prompts[:2]), by_hand(ep[:2], seqs[:2], "previous")),
             (previous_token_scores(m, length=7, batch=3, seed=5), by_hand(er, rand, "previous")),
             (sink_scores(m, prompts), by_hand(ep, seqs, "sink")),
             (sink_scores(m, prompts, token=token), by_hand(ep, seqs, "sink", token=token))]
    for table, want in cases:
        got = as_dict(table)
        assert got.keys() == want.keys() and len(got) == 4 * 4
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=TOL, rtol=0, err_msg=table.kind)
    assert as_dict(induction_scores(m, length=7, batch=3, seed=5, layers=[-1])).keys() == {(3, h) for h in range(4)}


# -- the planted model ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_heads_rank_first(planted, backend):
    m = planted(backend)
    seqs = repeated_random_tokens(m, length=20, batch=4, seed=1)
    pats = attention_patterns(m, seqs)
    n, q = len(seqs[0]), np.arange(21, 41)
    # the planted heads do what they were built to, by their own patterns
    prev = pats[PREV_HEAD[0]][:, PREV_HEAD[1]]
    assert prev[:, np.arange(1, n), np.arange(n - 1)].min() > 0.9
    ind = pats[INDUCTION_HEAD[0]][:, INDUCTION_HEAD[1]][:, q, q - 19]
    unique = np.array([[s[1:21].count(s[i]) == 1 for i in q] for s in seqs])  # a repeat splits the attention
    assert unique.mean() > 0.8 and ind[unique].min() > 0.9 and ind.mean() > 0.9
    for kind, planted_head in (("induction", INDUCTION_HEAD), ("previous", PREV_HEAD)):
        table = head_scores(m, kind, length=20, batch=4, seed=1)
        best, second = table.top(2).rows
        assert (best.layer, best.head) == planted_head and best.score > 0.9, table.top(3).to_text()
        assert second.score < 0.5 * best.score, table.top(3).to_text()


def test_planted_scores_agree_across_backends(planted):
    a, b = (as_dict(induction_scores(planted(be), length=20, batch=2)) for be in BACKENDS)
    np.testing.assert_allclose([a[k] for k in b], list(b.values()), atol=TOL, rtol=0)


# -- the table -----------------------------------------------------------------------------------
def test_table_sorts_saves_and_plots(backend_models, tmp_path):
    pytest.importorskip("matplotlib")
    table = induction_scores(backend_models("mlx", "gpt2"), length=6, batch=2)
    scores = [r.score for r in table.rows]
    assert [(r.layer, r.head) for r in table.rows] == [(i, h) for i in range(4) for h in range(4)]
    assert [r.score for r in table.sorted().rows] == sorted(scores, reverse=True)
    assert [r.score for r in table.sorted(descending=False).rows] == sorted(scores)
    top = table.top(3)
    assert len(top) == 3 and [r.score for r in top.rows] == sorted(scores, reverse=True)[:3]
    grid = table.grid()
    assert grid.shape == (4, 4) and grid[2, 1] == table.score(2, 1) == scores[2 * 4 + 1]
    assert (~np.isnan(top.grid())).sum() == 3  # the layers and heads it has, NaN where a head is not in it
    assert table.to_csv(tmp_path / "s.csv").splitlines()[0] == "kind,layer,head,score"
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 17
    table.to_json(tmp_path / "s.json")
    assert HeadScoreTable.from_json(tmp_path / "s.json") == table
    fig = table.heatmap(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown, top_shown = (f.axes[0].images[0].get_array() for f in (fig, top.heatmap()))
    assert shown is not None and shown.shape == (4, 4)
    assert top_shown is not None and np.ma.count(top_shown) == 3  # the rest blank
    with pytest.raises(ValueError, match=r"k must be a positive int, got 0"):
        table.top(0)
    with pytest.raises(KeyError, match=r"no head \(4, 0\) in this table; it has layers \[0, 1, 2, 3\]"):
        table.score(4, 0)


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_options_refused_with_the_valid_range(backend_models, planted, backend):
    m = backend_models(backend, "llama")
    cases = [
        (lambda: head_scores(m, "copying"), r"kind 'copying' unknown; valid: induction, previous, sink"),
        (lambda: induction_scores(m, length=1), r"length must be an int >= 2, got 1"),
        (lambda: induction_scores(m, batch=0), r"batch must be an int >= 1, got 0"),
        (lambda: head_scores(m, "induction", ["hi there"]), r"induction scores are read on repeated random tokens"),
        (lambda: head_scores(m, "previous", token=3), r"token applies to sink scores only"),
        (lambda: previous_token_scores(m, ["hi there", "I"]), r"prompt 1 is 1 token long"),
        (lambda: sink_scores(m, ["I love"], token=384), r"token 384 is not a token id; valid: 0\.\.383"),
        (lambda: sink_scores(m, ["I love"], token=300), r"token 300 \(.*\) occurs in no prompt"),
        (lambda: induction_scores(m, layers=[4]), r"layer 4 out of range for a 4-layer model; valid: -4\.\.3"),
        (lambda: induction_scores(planted(backend)), r"the prompt is 101 tokens but this model has 64 positions"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert m.remove_all_hooks() == 0  # nothing was left installed


# -- the command line ------------------------------------------------------------------------------
def test_cli_heads_scores(planted, planted_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "induction.csv", tmp_path / "induction.png"
    argv = ["heads", "scores", str(planted_dir), "--length", "20", "--batch", "3", "--top", "2"]
    assert main(argv + ["--out", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    want = induction_scores(planted("mlx"), length=20, batch=3)
    assert printed == want.top(2).to_text() + f"\nwrote {out}, {plot}\n"
    assert out.read_text() == want.to_csv() and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["--backend", "torch"] + argv + ["--kind", "previous", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [(r["layer"], r["head"]) for r in got["rows"]][0] == PREV_HEAD and len(got["rows"]) == 2
    first = planted("mlx").encode("I love this day")[0]
    assert main(argv + ["--kind", "sink", "--prompt", "I love this day", "--token", str(first), "--out",
                        str(tmp_path / "sink.json")]) == 0
    capsys.readouterr()
    saved = HeadScoreTable.from_json(tmp_path / "sink.json")
    assert saved == sink_scores(planted("mlx"), ["I love this day"], token=first)  # to it = to position 0 here
    assert as_dict(saved) == as_dict(sink_scores(planted("mlx"), ["I love this day"]))


def _usage(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_cli_user_errors(planted_dir, tmp_path, capsys, monkeypatch):
    model = str(planted_dir)
    assert _usage(["heads"], capsys) == "mlx-steer heads: error: the following arguments are required: SUBCOMMAND"
    assert _usage(["heads", "scores", model, "--top", "0"], capsys).endswith("argument --top: must be >= 1, got 0")
    assert _usage(["heads", "scores", model, "--length", "1"], capsys).endswith("argument --length: must be >= 2, got 1")
    assert _usage(["heads", "scores", model, "--kind", "copying"], capsys).startswith(
        "mlx-steer heads scores: error: argument --kind: invalid choice: 'copying'")
    assert _usage(["heads", "scores", model, "--token", "3"], capsys) == (
        "mlx-steer heads scores: error: --token applies to --kind sink only, not induction")
    assert _usage(["heads", "scores", model, "--prompt", "hi"], capsys).endswith(
        "--prompt does not apply to --kind induction (it reads repeated random tokens)")
    assert _usage(["heads", "scores", model, "--out", str(tmp_path / "x.txt")], capsys).endswith(
        "give a .csv or .json file name")
    existing = tmp_path / "there.csv"
    existing.write_text("keep")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("mlx_steer.cli.loading.load_model", no_model)
    cases: list[tuple[list[str], str]] = [
        (["--out", str(existing)], f"{existing} exists; pass --force to overwrite it"),
        (["--plot", str(tmp_path / "no" / "p.png")], f"no such folder for the output: {tmp_path / 'no'}")]
    for argv, message in cases:
        assert main(["heads", "scores", model, *argv]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {message}\n", err
    assert existing.read_text() == "keep"
    monkeypatch.undo()
    assert main(["heads", "scores", model, "--length", "40"]) == 2  # 81 tokens > 64 positions: one line
    err = capsys.readouterr().err
    assert err.startswith("error: the prompt is 81 tokens but this model has 64 positions") and err.count("\n") == 1


# -- SmolLM2 and the docs page -----------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_top_heads_well_above_the_median(smollm2, smollm2_torch):
    for score in (induction_scores, previous_token_scores):
        table = score(smollm2)
        median = float(np.median([r.score for r in table.rows]))
        top = table.top(5)
        assert len(table) == 30 * 9 and all(r.score > max(0.3, 10 * median) for r in top.rows), top.to_text()
        other = as_dict(score(smollm2_torch))  # the other backend, same sequences
        np.testing.assert_allclose([other[k] for k in as_dict(table)], list(as_dict(table).values()), atol=TOL, rtol=0)
    induction = as_dict(induction_scores(smollm2))
    assert max(induction, key=induction.__getitem__)[0] in range(10, 25)  # sanity: a middle layer, not an edge


SECTION = "## Head scores"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def section_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "heads.md").read_text()
    body = text[text.index(SECTION):]
    body = body[: body.find("\n## ", 1)] if "\n## " in body[1:] else body
    return FENCE.findall(body)


def same_tables(got: str, shown: str) -> None:
    """Printed score tables equal the page's: same lines, scores within 2e-3 (another device)."""
    g, s = got.strip().splitlines(), shown.strip().splitlines()
    assert len(g) == len(s), f"printed:\n{got}\nthe page shows:\n{shown}"
    for a, b in zip(g, s):
        if re.fullmatch(r"\s*\d+\s+\d+\s+\d+\s+[\d.]+", b):
            assert a.split()[:3] == b.split()[:3] and abs(float(a.split()[3]) - float(b.split()[3])) < 2e-3, (a, b)
        else:
            assert a == b


def test_docs_section_blocks_and_command_parse():
    from mlx_steer.cli import build_parser

    kinds = [k for k, _ in section_blocks()]
    assert kinds == ["python", "text", "bash", "text"], kinds
    (_, command), = [b for b in section_blocks() if b[0] == "bash"]
    args = build_parser().parse_args(command.split()[1:])
    assert (args.command, args.heads_command, args.kind, args.top) == ("heads", "scores", "induction", 5)


@pytest.mark.slow
def test_docs_section_runs_as_written(smollm2_dir, tmp_path):
    import os

    (_, code), (_, shown), (_, command), (_, shown_cli) = section_blocks()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLX_STEER_CACHE": str(smollm2_dir.parent)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_tables(proc.stdout, shown)
    assert (tmp_path / "induction.csv").exists() and (tmp_path / "induction.png").exists()
    for name in ("induction.csv", "induction.png"):
        (tmp_path / name).unlink()
    default = "~/.cache/mlx_steer/smollm2-135m-instruct"
    if Path(default).expanduser() != smollm2_dir:  # a CI cache elsewhere
        command = command.replace(default, str(smollm2_dir))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_tables(proc.stdout, shown_cli)
