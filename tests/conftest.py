"""Shared fixtures: tiny seeded models saved once per session, loaded fresh per test when mutated."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mlx_steer  # noqa: F401  -- first: on Linux it gives MLX the optimized BLAS before anything imports mlx

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_dir(tiny_root):
    """tiny_dir(arch) -> folder of a seeded random fp32 model of that architecture."""

    def get(arch: str) -> Path:
        return tiny_models.build(arch, tiny_root / arch)

    return get


@pytest.fixture(scope="session")
def load_tiny(tiny_dir):
    """load_tiny(arch) -> a fresh SteerableModel (safe to quantize or cast)."""
    import mlx_steer as ms

    def get(arch: str):
        return ms.load(str(tiny_dir(arch)))

    return get


@pytest.fixture(scope="session")
def shared_models(load_tiny):
    """Session cache of unmodified models: shared_models(arch). Tests must not mutate them."""
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_tiny(arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def marker_models(tiny_root):
    """marker_models(backend) -> a shared tiny llama whose tokenizer has ``<think>``, ``</think>``,
    ``<tool_call>`` and ``</tool_call>`` as added special tokens (tests must not mutate it)."""
    import mlx_steer as ms

    folder = tiny_models.build("llama", tiny_root / "llama-markers", seed=3, markers=True)
    cache: dict = {}

    def get(backend: str = "mlx"):
        if backend not in cache:
            cache[backend] = ms.load(str(folder), backend=backend)
        return cache[backend]

    return get


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, prepared once per cache (CI sets MLX_STEER_CACHE)."""
    import os

    from mlx_steer.demo.real_model import prepare_smollm2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a model hub
    return prepare_smollm2(cache_dir=os.environ.get("MLX_STEER_CACHE") or None, verbose=False)


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """A shared SteerableModel of SmolLM2 (tests must not mutate it)."""
    import mlx_steer as ms

    return ms.load(str(smollm2_dir))


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_dir):
    """A shared torch-backend model of SmolLM2, fp32 (tests must not mutate it)."""
    from mlx_steer.torch_backend import load

    return load(str(smollm2_dir))
