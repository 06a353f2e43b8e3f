"""Fixtures and independent oracles for the torch backend, and per-backend adapters so one test
body runs on both backends. The torch oracles use only transformers and test-owned torch hooks,
nothing from mlx_steer's hooking or position code.

Import with ``from torch_fixtures import *`` in a test file to get the fixtures.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

BACKENDS = ("mlx", "torch")
# the final norm HF applies to the last entry of ``hidden_states`` (not part of block N-1's output)
FINAL_NORM = {"gpt2": "transformer.ln_f"}


@pytest.fixture(scope="session")
def load_torch(tiny_dir):
    """load_torch(arch, **load_kwargs) -> a fresh TorchSteerableModel (safe to mutate)."""
    from mlx_steer.torch_backend import load

    def get(arch: str, **kwargs):
        return load(str(tiny_dir(arch)), **kwargs)

    return get


@pytest.fixture(scope="session")
def torch_models(load_torch):
    """Session cache of unmodified torch models: torch_models(arch). Tests must not mutate them
    (nor call them with ``output_hidden_states``, which installs transformers' own hooks)."""
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_torch(arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def backend_models(shared_models, torch_models):
    """backend_models(backend, arch) -> the shared model of that backend."""

    def get(backend: str, arch: str):
        return shared_models(arch) if backend == "mlx" else torch_models(arch)

    return get


@pytest.fixture(scope="session")
def fresh_models(load_tiny, load_torch):
    """fresh_models(backend, arch) -> a freshly loaded model of that backend."""

    def get(backend: str, arch: str):
        return load_tiny(arch) if backend == "mlx" else load_torch(arch)

    return get


# -- per-backend adapters ------------------------------------------------------------------------
def np_(m, x) -> np.ndarray:
    """A float32 numpy copy of a backend array."""
    return m.to_numpy(x)


def raw_logits(m, tokens: list[int]) -> np.ndarray:
    """Logits of the bare model for one sequence (no mlx_steer entry point involved)."""
    if _is_torch(m):
        import torch

        with torch.no_grad():
            return m.model(input_ids=torch.tensor([tokens])).logits.numpy()
    import mlx.core as mx

    return np.array(m.model(mx.array([tokens])))


def greedy_recompute(m, prompt: list[int], n: int, *, index: int, delta_for, eos: int = 2) -> list[int]:
    """Greedy tokens recomputing the whole sequence without a cache at every step; ``delta_for(T)``
    is the (T, D) array added to block ``index``'s output."""
    if not _is_torch(m):
        from oracles import greedy_recompute as mlx_recompute

        return mlx_recompute(m.model, prompt, n, index=index, delta_for=delta_for, eos=eos)
    import torch

    seq, out = list(prompt), []
    for _ in range(n):
        with torch_layer_delta(m, index, delta_for(len(seq))), torch.no_grad():
            logits = m.model(input_ids=torch.tensor([seq])).logits
        tok = int(torch.argmax(logits[0, -1]))
        if tok == eos:
            break
        out.append(tok)
        seq.append(tok)
    return out


@contextlib.contextmanager
def torch_layer_delta(m, index: int, delta: np.ndarray):
    """A test-owned forward hook adding delta[p] to block ``index``'s output at position p."""
    import torch

    decoder = m.model.get_decoder()
    block = (decoder.layers if hasattr(decoder, "layers") else decoder.h)[index]

    def hook(module, args, out):
        L = out.shape[1]
        return out + torch.from_numpy(np.asarray(delta[:L], np.float32))[None].to(out.device, out.dtype)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def snapshot(m):
    """Parameters (by name), module classes, and what is attached to the modules: the names of the
    patched modules on MLX, every module's hook ids on torch."""
    if _is_torch(m):
        params = {k: v.detach().clone() for k, v in m.model.named_parameters()}
        attached = torch_hook_ids(m.model)
    else:
        from mlx.utils import tree_flatten

        import mlx_steer.backends.mlx.hooks as hk

        params = {k: np.array(v) for k, v in tree_flatten(m.model.parameters())}
        attached = [n for n, mod in m.model.named_modules() if hk.is_patched(mod)]
    return params, {n: type(mod) for n, mod in m.model.named_modules()}, attached


def assert_untouched(m, before) -> None:
    """The model is as ``snapshot`` found it: the same parameters bit for bit, the same module
    classes, the same hooks (torch; transformers may keep its own) and no patched module (MLX)."""
    params, classes, attached = snapshot(m)
    if _is_torch(m):
        import torch

        same = torch.equal
    else:
        same = np.array_equal
        assert attached == []
    assert params.keys() == before[0].keys()
    assert all(same(params[k], before[0][k]) for k in params)
    assert classes == before[1] and attached == before[2]


def torch_hook_ids(model) -> dict[str, tuple]:
    """Hook ids per module name, only for modules that have any."""
    out = {}
    for name, mod in model.named_modules():
        ids = tuple(tuple(getattr(mod, d)) for d in (
            "_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"))
        if any(ids):
            out[name] = ids
    return out


def patch_attach(m, monkeypatch, wrapper) -> None:
    """Replace the backend's single hook-registration function by ``wrapper(real)``."""
    if _is_torch(m):
        import mlx_steer.backends.torch.hooks as hk
    else:
        import mlx_steer.backends.mlx.hooks as hk
    monkeypatch.setattr(hk, "attach", wrapper(hk.attach))


def is_patched(m, path: str) -> bool:
    if _is_torch(m):
        return bool(m.modules[path]._forward_hooks or m.modules[path]._forward_pre_hooks)
    import mlx_steer.backends.mlx.hooks as hk

    return hk.is_patched(m.modules[path])


def _is_torch(m) -> bool:
    return type(m).__name__ == "TorchSteerableModel"


def prompt_cosines(m, prompts, site, direction):
    """The oracle of a ``read="mean", measure="cosine"`` condition: each prompt's mean activation at
    ``site``, recorded alone, against ``direction`` (numpy, float64)."""
    out = []
    for p in prompts:
        a = m.to_numpy(m.run(p, record=[site]).activations[site])[0].astype(np.float64).mean(0)
        out.append(float(a @ direction / np.linalg.norm(direction) / np.linalg.norm(a)))
    return out


def threshold_between(values):
    """A threshold between the two middle values: some pass, some do not, none ties."""
    cut = sorted(values)
    return (cut[len(cut) // 2 - 1] + cut[len(cut) // 2]) / 2
