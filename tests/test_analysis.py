"""Analysis (unembedding, top tokens, norms, monitoring, persistence, sweeps) against oracles
computed by hand: weight matrices in numpy, blocks run one by one, test-owned layer wrappers."""

import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_steer import analysis as an
from mlx_steer.engine import interventions as iv
from oracles import block_outputs, layer_delta

PROMPT = "Tell me a story about a cat"
NEUTRAL = ["The weather is", "Paris is the capital of France. Berlin", "Q: What is two plus two?"]
EOS = 2


def _sv(directions: dict, hook_point: str = "output"):
    from mlx_steer.vectors.steering_vector import SteeringVector

    return SteeringVector(directions={k: np.asarray(v, np.float32) for k, v in directions.items()},
                          hook_point=hook_point, hidden_size=len(next(iter(directions.values()))))


def _rand(m, seed, norm=None):
    v = np.random.default_rng(seed).normal(size=m.hidden_size).astype(np.float32)
    return v * np.float32(norm / np.linalg.norm(v)) if norm else v


def _head_weight(m, arch):
    """The unembedding matrix (V, D), found by hand per architecture."""
    inner = m.model.model
    if arch in ("llama", "phi3"):
        return np.array(m.model.lm_head.weight)
    return np.array(inner.wte.weight if arch == "gpt2" else inner.embed_tokens.weight)


def _final_norm(m, arch, x):
    """The final norm written out in numpy."""
    args = m.model.args
    if arch == "gpt2":
        ln = m.model.model.ln_f
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + args.layer_norm_epsilon) * np.array(ln.weight) + np.array(ln.bias)
    w = np.array(m.model.model.norm.weight)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + args.rms_norm_eps) * w


def _greedy(m, prompt, n, *, index, delta_for, ban_eos=True):
    """Greedy tokens recomputing the whole sequence each step; delta_for(T) -> (T, D) added to
    block ``index``'s output by a test-owned wrapper."""
    seq, out = list(prompt), []
    for _ in range(n):
        with layer_delta(m.model, index, delta_for(len(seq))):
            logits = np.array(m.model(mx.array([seq]))[0, -1])
        if ban_eos:
            logits[EOS] = -np.inf
        tok = int(np.argmax(logits))
        if tok == EOS:
            break
        out.append(tok)
        seq.append(tok)
    return out


def _ban_eos(m):
    return [m.ban_tokens_processor([EOS])]


# -- unembed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "phi3", "qwen2", "gpt2", "gemma2"])
def test_unembed_equals_weight_matrix(shared_models, arch):
    m = shared_models(arch)
    W = _head_weight(m, arch)
    V = np.stack([_rand(m, s) for s in range(3)])
    np.testing.assert_allclose(m.unembed(V), V @ W.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.unembed(V[1]), V[1] @ W.T, rtol=1e-5, atol=1e-5)
    tied = arch in ("qwen2", "gpt2", "gemma2")
    assert (m.unembedding_path == "lm_head") != tied


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unembed_final_norm_by_hand(shared_models, arch):
    m = shared_models(arch)
    W = _head_weight(m, arch)
    V = np.stack([_rand(m, s, norm=5.0) + 1.0 for s in range(3)])
    np.testing.assert_allclose(m.unembed(V, final_norm=True), _final_norm(m, arch, V) @ W.T, rtol=1e-4, atol=1e-4)
    # logit lens of the last block's output is the model's own logits (no softcap here)
    tr = m.run(PROMPT, record=["layers.-1"])
    h = np.array(tr.activations["layers.-1"])[0]
    np.testing.assert_allclose(m.unembed(h, final_norm=True), np.array(tr.logits)[0], rtol=1e-4, atol=1e-4)


def test_unembed_quantized_tied_embedding(load_tiny):
    import mlx_steer as ms

    base = load_tiny("qwen2")
    W = np.array(base.model.model.embed_tokens.weight)
    nn.quantize(base.model, group_size=32, bits=4)
    m = ms.SteerableModel(base.model, base.tokenizer)
    emb = m.model.model.embed_tokens
    assert isinstance(emb, nn.QuantizedEmbedding) and m.unembedding_path == "model.embed_tokens"
    Wq = np.array(mx.dequantize(emb.weight, emb.scales, emb.biases, group_size=emb.group_size, bits=emb.bits))
    V = np.stack([_rand(m, s) for s in range(3)])
    got = m.unembed(V)
    np.testing.assert_allclose(got, V @ Wq.T, rtol=1e-4, atol=1e-4)
    assert np.abs(got - V @ W.T).max() > 1e-2  # the 4-bit weights were used, not some float copy


def test_unembed_rejects_bad_width(shared_models):
    m = shared_models("llama")
    with pytest.raises(ValueError, match=r"\(K, 64\)"):
        m.unembed(np.zeros((2, 63), np.float32))


# -- top tokens ------------------------------------------------------------------------------
@pytest.mark.parametrize("final_norm", [False, True])
def test_top_tokens_order_matches_argsort(shared_models, final_norm):
    m = shared_models("llama")
    W = _head_weight(m, "llama")
    v1, v2 = _rand(m, 1), _rand(m, 2)
    sv = _sv({"model.layers.1": v1, "model.layers.2": v2})
    rep = an.top_tokens(m, sv, site="layers.2", k=7, final_norm=final_norm)
    oracle = (_final_norm(m, "llama", v2[None])[0] if final_norm else v2) @ W.T
    assert [i for _, i, _ in rep.boosted] == list(np.argsort(-oracle)[:7])
    assert [i for _, i, _ in rep.suppressed] == list(np.argsort(oracle)[:7])
    np.testing.assert_allclose([s for _, _, s in rep.boosted], np.sort(oracle)[::-1][:7], rtol=1e-4)
    assert [t for t, _, _ in rep.boosted] == [m.tokenizer.decode([int(i)]) for i in np.argsort(-oracle)[:7]]
    assert rep.site == "model.layers.2"
    raw = an.top_tokens(m, v2, k=7, final_norm=final_norm)
    assert raw.boosted == rep.boosted and raw.suppressed == rep.suppressed
    with pytest.raises(ValueError, match="pass site="):
        an.top_tokens(m, sv)


# -- norms -----------------------------------------------------------------------------------
def test_norm_profile_and_relative_scale(shared_models):
    m = shared_models("llama")
    v1, v3 = _rand(m, 1, norm=3.0), _rand(m, 3, norm=7.0)
    sv = _sv({"model.layers.1": v1, "model.layers.3": v3})
    rows = an.norm_profile(m, sv, NEUTRAL, batch_size=2)  # padded batches: padding must not count
    outs = [block_outputs(m.model, m.encode(p)) for p in NEUTRAL]
    for row, (layer, v) in zip(rows, [(1, v1), (3, v3)]):
        mean = np.concatenate([np.linalg.norm(o[layer], axis=-1) for o in outs]).mean()
        assert row.site == f"model.layers.{layer}"
        np.testing.assert_allclose(row.vector_norm, np.linalg.norm(v), rtol=1e-5)
        np.testing.assert_allclose(row.mean_residual_norm, mean, rtol=1e-5)
        np.testing.assert_allclose(row.ratio, np.linalg.norm(v) / mean, rtol=1e-5)
        s = an.relative_scale(m, f"layers.{layer}", sv, NEUTRAL, 0.25)
        np.testing.assert_allclose(s * np.linalg.norm(v), 0.25 * mean, rtol=1e-5)
    # an input-hooked vector is measured on the stream entering its block (= previous block's output)
    (row,) = an.norm_profile(m, _sv({"model.layers.2": v1}, hook_point="input"), NEUTRAL)
    mean = np.concatenate([np.linalg.norm(o[1], axis=-1) for o in outs]).mean()
    assert row.site == "model.layers.2:input"
    np.testing.assert_allclose(row.mean_residual_norm, mean, rtol=1e-5)


# -- projection monitor ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("steered", [False, True])
def test_projection_monitor_matches_full_recompute(shared_models, arch, steered):
    m = shared_models(arch)
    ids = m.encode(PROMPT)
    P, N, D = len(ids), 8, m.hidden_size
    d, v = _rand(m, 4), _rand(m, 5, norm=20.0)
    spec = {"layers.1": iv.add_vector(v)} if steered else None
    mon = an.projection_monitor(m, PROMPT, site="layers.2", direction=d, max_tokens=N,
                                interventions=spec, logits_processors=_ban_eos(m))
    delta = (lambda T: np.tile(v, (T, 1))) if steered else (lambda T: np.zeros((T, D), np.float32))
    assert list(mon.tokens) == _greedy(m, ids, N, index=1, delta_for=delta)
    seq = ids + list(mon.tokens)
    with layer_delta(m.model, 1, delta(len(seq))):
        h = block_outputs(m.model, seq)[2]
    expected = h[P - 1 : P - 1 + N] @ (d / np.linalg.norm(d))  # position P-1+i produced token i
    np.testing.assert_allclose(mon.projections, expected, rtol=1e-4, atol=1e-4)
    assert list(mon.positions) == list(range(P - 1, P - 1 + N))
    assert mon.text == m.tokenizer.decode(list(mon.tokens))


# -- persistence -----------------------------------------------------------------------------
@pytest.mark.parametrize("steer_prompt", [False, True])
def test_persistence_run_against_windowed_recompute(shared_models, steer_prompt):
    m = shared_models("llama")
    ids = m.encode(PROMPT)
    P, n, k, D = len(ids), 4, 6, m.hidden_size
    v = _rand(m, 6, norm=30.0)
    sv = _sv({"model.layers.1": v})
    run = an.persistence_run(m, PROMPT, vector=sv, steer_tokens=n, free_tokens=k, site="layers.1",
                             suppress_eos=True, steer_prompt=steer_prompt)

    def window(T):  # steered positions, written out: [P-1 (or 0), P-1+n)
        p = np.arange(T)
        on = (p >= (0 if steer_prompt else P - 1)) & (p < P - 1 + n)
        return on[:, None] * v[None]

    def always(T):
        p = np.arange(T)
        return (p >= (0 if steer_prompt else P - 1))[:, None] * v[None]

    expected = _greedy(m, ids, n + k, index=1, delta_for=window)
    assert list(run.tokens) == expected and len(expected) == n + k
    steered_all_along = _greedy(m, ids, n + k, index=1, delta_for=always)
    plain = _greedy(m, ids, n + k, index=1, delta_for=lambda T: np.zeros((T, D), np.float32))
    assert steered_all_along[:n] == expected[:n]  # first n tokens: produced under steering
    assert steered_all_along[n:] != expected[n:]  # the oracle can tell releasing apart
    assert plain[:n] != expected[:n]  # ... and steering apart
    assert list(run.steered) == [True] * n + [False] * k and run.free_phase == tuple(expected[n:]) and run.steered_phase == tuple(expected[:n])
    seq = ids + expected
    with layer_delta(m.model, 1, window(len(seq))):
        h = block_outputs(m.model, seq)[1]
    np.testing.assert_allclose(run.projections, h[P - 1 : P - 1 + n + k] @ (v / np.linalg.norm(v)), rtol=1e-4, atol=1e-4)


def test_persistence_run_raw_vector_and_interventions_agree(shared_models):
    m = shared_models("llama")
    v = _rand(m, 6, norm=30.0)
    kw = dict(steer_tokens=3, free_tokens=3, site="layers.1", suppress_eos=True)
    a = an.persistence_run(m, PROMPT, vector=v, **kw)
    b = an.persistence_run(m, PROMPT, interventions={"layers.1": iv.add_vector(v)}, direction=v, **kw)
    assert a.tokens == b.tokens and len(a.tokens) == 6
    np.testing.assert_array_equal(a.projections, b.projections)
    with pytest.raises(ValueError, match="positions='all'"):
        an.persistence_run(m, PROMPT, interventions={"layers.1": iv.add_vector(v, positions="last")}, direction=v, **kw)
    with pytest.raises(ValueError, match="exactly one"):
        an.persistence_run(m, PROMPT, **kw)


# -- sweep -----------------------------------------------------------------------------------
def _logits(m, ids, index=None, delta=None):
    if index is None:
        return np.array(m.model(mx.array([ids]))[0]).astype(np.float64)
    with layer_delta(m.model, index, delta):
        return np.array(m.model(mx.array([ids]))[0]).astype(np.float64)


def _logsoftmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# gemma2 runs padded batches row by row; its batch of 3 avoids B == n_kv_heads (2), where
# mlx-lm's gemma2 mask broadcasts wrongly instead of failing
# batch_size 64 puts every steered cell of the sweep side by side in one forward (per-row steering)
@pytest.mark.parametrize(("arch", "batch_size"), [("llama", 2), ("gemma2", 3), ("llama", 64), ("qwen2", 64)])
def test_sweep_logit_diff_against_recompute(shared_models, arch, batch_size):
    m = shared_models(arch)
    target, contrast = [10, 40], [77]
    v = _rand(m, 7, norm=4.0)
    strengths = [0.0, 0.5, 2.0]
    res = an.sweep(m, vector=_sv({"model.layers.1": v, "model.layers.2": -v}), layers=[1, 2],
                   strengths=strengths, prompts=NEUTRAL, target_tokens=target, contrast_tokens=contrast,
                   batch_size=batch_size)
    toks = [m.encode(p) for p in NEUTRAL]
    base = [_logits(m, t) for t in toks]

    def diff(lg):
        return lg[-1, target].mean() - lg[-1, contrast].mean()

    base_behaviour = np.mean([diff(b) for b in base])
    assert res.baseline == pytest.approx(base_behaviour, rel=1e-5, abs=1e-5)
    assert [(r.layer, r.strength) for r in res.table] == [(la, s) for la in (1, 2) for s in strengths]
    for r in res.table:
        d = v if r.layer == 1 else -v
        if r.strength == 0.0:
            assert r.kl == 0.0 and r.behaviour == res.baseline
            continue
        steered = [_logits(m, t, r.layer, np.tile(r.strength * d, (len(t), 1))) for t in toks]
        kl = np.concatenate([(np.exp(_logsoftmax(b)) * (_logsoftmax(b) - _logsoftmax(s))).sum(-1)
                             for b, s in zip(base, steered)]).mean()
        assert r.behaviour == pytest.approx(np.mean([diff(s) for s in steered]), rel=1e-4, abs=1e-4)
        assert r.kl == pytest.approx(kl, rel=1e-3, abs=1e-6) and r.kl > 1e-4


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_sweep_batches_cells_as_rows(shared_models, tiny_dir, backend, monkeypatch):
    """Cells share forwards (one block of rows per cell) and give the one-cell-per-forward numbers."""
    if backend == "torch":
        pytest.importorskip("torch")
        from mlx_steer.torch_backend import load

        m = load(str(tiny_dir("llama")))
    else:
        m = shared_models("llama")
    kw = dict(vector=_rand(m, 3, norm=4.0), layers=[1, 2], strengths=[-2.0, 0.0, 1.0, 3.0], prompts=NEUTRAL,
              target_tokens=[10], contrast_tokens=[11], progress=False)
    calls = []
    real_run = type(m).run
    monkeypatch.setattr(type(m), "run", lambda self, prompts, **k: calls.append(len(prompts)) or real_run(self, prompts, **k))
    starts = []
    monkeypatch.setattr(type(m.backend), "bypass",
                        lambda self, path, fn, _b=type(m.backend).bypass: starts.append(path) or _b(self, path, fn))
    one = an.sweep(m, **kw, batch_size=len(NEUTRAL), share_layers=False)
    n_one, calls[:] = len(calls), []
    batched = an.sweep(m, **kw, batch_size=64, share_layers=False)
    assert n_one == 1 + 6 and len(calls) == 1 + 1  # baseline + the six steered cells
    assert calls[1] == 6 * len(NEUTRAL)
    np.testing.assert_allclose(np.array(batched.table, dtype=float), np.array(one.table, dtype=float), atol=1e-5)
    assert len({round(r.behaviour, 3) for r in batched.table}) == 7  # every cell measured its own steering
    assert starts == []
    calls[:] = []
    shared = an.sweep(m, **kw, batch_size=64)  # the layers below the steered ones run once
    assert calls == [len(NEUTRAL), 6 * len(NEUTRAL) + 1]  # baseline; the cells, plus one prompt unsteered (the check)
    assert starts == [m.layer_paths[0]]  # the cells' forward starts at layer 1: layer 0 is skipped
    np.testing.assert_allclose(np.array(shared.table, dtype=float), np.array(one.table, dtype=float), atol=1e-5)


@pytest.mark.parametrize("broken", ["wrong input", "raises"])
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_sweep_runs_whole_forwards_where_skipping_layers_differs(shared_models, tiny_dir, backend, broken, monkeypatch):
    """A model where a forward that starts at a layer does not match the whole one (the skipped
    layers hand on a wrong input), or cannot start there, is caught by the check: forwards run whole."""
    if backend == "torch":
        pytest.importorskip("torch")
        from mlx_steer.torch_backend import load

        m = load(str(tiny_dir("qwen2")))
    else:
        m = shared_models("qwen2")
    kw = dict(vector=_rand(m, 5, norm=4.0), layers=[2, 3], strengths=[-2.0, 2.0], prompts=NEUTRAL,
              target_tokens=[10], contrast_tokens=[11], progress=False, batch_size=64)
    whole = an.sweep(m, **kw, share_layers=False)
    real = type(m.backend).bypass
    if broken == "raises":
        monkeypatch.setattr(type(m.backend), "bypass",
                            lambda self, path, fn: (_ for _ in ()).throw(TypeError("no skipping")))
    else:
        monkeypatch.setattr(type(m.backend), "bypass", lambda self, path, fn: real(self, path, lambda h: fn(h) * 0.5))
    checked = an.sweep(m, **kw)
    np.testing.assert_allclose(np.array(checked.table, dtype=float), np.array(whole.table, dtype=float), atol=1e-5)
    monkeypatch.undo()  # nothing of the skipping attempt is left installed: a whole sweep is unchanged
    again = an.sweep(m, **kw, share_layers=False)
    np.testing.assert_array_equal(np.array(again.table, dtype=float), np.array(whole.table, dtype=float))


def test_sweep_unembedding_direction_is_monotonic(shared_models):
    m = shared_models("llama")
    # Steering the last block's output along u = W[t] - W[c] before an RMSNorm with unit weight
    # raises the logit difference monotonically: d/ds of (u.h + s|u|^2) / |h + s u| is
    # proportional to |u|^2 |h|^2 - (u.h)^2 >= 0 (Cauchy-Schwarz).
    assert np.all(np.array(m.model.model.norm.weight) == 1.0)
    W = _head_weight(m, "llama")
    t, c = 10, 77
    u = W[t] - W[c]
    strengths = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    res = an.sweep(m, vector=u, layers=[3], strengths=strengths, prompts=NEUTRAL,
                   target_tokens=t, contrast_tokens=[c])
    b = res.grid("behaviour")[0]
    assert np.all(np.diff(b) > 0), b
    assert res.grid("kl")[0][0] == 0.0 and np.all(res.grid("kl")[0][1:] > 0)


def test_sweep_projection_metric(shared_models):
    m = shared_models("llama")
    v, d = _rand(m, 8, norm=5.0), _rand(m, 9)
    res = an.sweep(m, vector=v, layers=[1], strengths=[0.0, 3.0], prompts=NEUTRAL, metric="projection",
                   direction=d, read_site="layers.3")
    unit = d / np.linalg.norm(d)
    for r in res.table:
        got = []
        for p in NEUTRAL:
            ids = m.encode(p)
            with layer_delta(m.model, 1, np.tile(r.strength * v, (len(ids), 1))):
                got.append(block_outputs(m.model, ids)[3][-1] @ unit)
        assert r.behaviour == pytest.approx(np.mean(got), rel=1e-4, abs=1e-4)
    assert res.table[0].behaviour != pytest.approx(res.table[1].behaviour, abs=1e-2)


def test_sweep_text_and_heatmap(shared_models, tmp_path, monkeypatch):
    m = shared_models("llama")
    res = an.sweep(m, vector=_rand(m, 1), layers=[1, 2], strengths=[0.0, 1.0], prompts=NEUTRAL[:2],
                   target_tokens=[10], contrast_tokens=[11])
    lines = res.to_text().splitlines()
    assert len(lines) == 2 + 4 and len({len(x) for x in lines[1:]}) == 1
    assert lines[2].split()[:2] == ["1", "0"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "mlx-steer\[plot\]"'):
        res.heatmap(tmp_path / "h.png")


def test_sweep_heatmap_png_prints_each_cell(shared_models, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="heatmaps need the [plot] extra (matplotlib)")
    from matplotlib.figure import Figure

    m = shared_models("llama")
    res = an.sweep(m, vector=_rand(m, 1), layers=[1, 2], strengths=[0.0, 1.0, 3.0], prompts=NEUTRAL[:2],
                   target_tokens=[10], contrast_tokens=[11], progress=False)
    saved = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real_savefig(fig, *a, **k))[1])
    path = res.heatmap(tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = saved
    maps = [ax for ax in fig.axes if ax.images]  # the two heatmaps, not their colorbars
    assert [ax.get_title() for ax in maps] == ["logit_diff", "KL(base || steered)"]
    for ax, value in zip(maps, ("behaviour", "kl")):
        grid = res.grid(value)
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert cells == {(i, j): f"{x:.3g}" for (i, j), x in np.ndenumerate(grid)}
    assert float(maps[0].texts[0].get_text()) == pytest.approx(res.baseline, rel=1e-2)


def test_sweep_progress_bar_over_cells(shared_models, capsys):
    m = shared_models("llama")
    kw = dict(vector=_rand(m, 1), layers=[1, 2], strengths=[0.0, 1.0, 2.0], prompts=NEUTRAL[:2],
              target_tokens=[10], contrast_tokens=[11])
    quiet = an.sweep(m, **kw, progress=False)
    assert capsys.readouterr().err == ""
    loud = an.sweep(m, **kw)  # on by default, on stderr
    err = capsys.readouterr()
    assert "sweep" in err.err and "6/6" in err.err and err.out == ""
    assert loud.table == quiet.table


def test_sweep_bad_inputs(shared_models):
    m = shared_models("llama")
    v = _rand(m, 1)
    with pytest.raises(ValueError, match="unknown metric"):
        an.sweep(m, vector=v, layers=[1], strengths=[1.0], prompts=NEUTRAL, metric="vibes")
    with pytest.raises(ValueError, match="needs target_tokens"):
        an.sweep(m, vector=v, layers=[1], strengths=[1.0], prompts=NEUTRAL)
    with pytest.raises(ValueError, match="no direction at layer 3"):
        an.sweep(m, vector=_sv({"model.layers.1": v, "model.layers.2": v}), layers=[3], strengths=[1.0],
                 prompts=NEUTRAL, target_tokens=[1], contrast_tokens=[2])
    with pytest.raises(ValueError, match="out of range"):
        an.sweep(m, vector=v, layers=[1], strengths=[1.0], prompts=NEUTRAL, target_tokens=[10_000], contrast_tokens=[2])
    with pytest.raises(TypeError, match="got True"):
        an.sweep(m, vector=v, layers=[True], strengths=[1.0], prompts=NEUTRAL, target_tokens=[1], contrast_tokens=[2])


# -- the same analysis on the torch backend --------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_analysis_same_on_torch_backend(shared_models, tiny_dir, arch):
    pytest.importorskip("torch")
    from mlx_steer.torch_backend import load

    mm, tm = shared_models(arch), load(str(tiny_dir(arch)))
    v, d = _rand(mm, 11), _rand(mm, 12)
    for final_norm in (False, True):
        a, b = (an.top_tokens(x, v, k=5, final_norm=final_norm) for x in (mm, tm))
        assert [i for _, i, _ in a.boosted] == [i for _, i, _ in b.boosted]
        np.testing.assert_allclose(mm.unembed(v, final_norm=final_norm), tm.unembed(v, final_norm=final_norm), atol=1e-4)
    a, b = (an.persistence_run(x, PROMPT, vector=v * 5, steer_tokens=3, free_tokens=4, site="layers.2",
                               direction=d, suppress_eos=True) for x in (mm, tm))
    assert a.tokens == b.tokens
    np.testing.assert_allclose(a.projections, b.projections, atol=1e-4)
    a, b = (an.sweep(x, vector=v, layers=[1, 2], strengths=[0.0, 2.0], prompts=NEUTRAL,
                     target_tokens=[10], contrast_tokens=[11]) for x in (mm, tm))
    np.testing.assert_allclose(np.array(a.table, dtype=float), np.array(b.table, dtype=float), atol=1e-4)
    a, b = (an.relative_scale(x, "layers.1", v, NEUTRAL, 0.5) for x in (mm, tm))
    assert a == pytest.approx(b, rel=1e-5)
