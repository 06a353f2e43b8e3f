"""The mlx-lm internals the MLX backend's continuous batching relies on, each checked against the
installed mlx-lm (mlx_steer.backends.mlx.generator_rows is the one module that uses them). That the rows
they register are each forward's real rows is what tests/test_continuous.py and tests/test_rows.py check:
every sequence of a continuous batch equals its solo run while sequences join and leave."""

from __future__ import annotations

import inspect

from mlx_steer.backends.mlx import generator_rows


def test_each_internal_it_relies_on_is_in_this_mlx_lm(shared_models):
    import importlib

    g = importlib.import_module("mlx_lm.generate")  # the module (mlx_lm.generate is also a function)

    m = shared_models("llama")
    gen = g.BatchGenerator(m.model, max_tokens=2)
    try:
        checks = {
            "mlx_lm.generate.PromptProcessingBatch": all(callable(getattr(g.PromptProcessingBatch, n, None))
                                                         for n in ("prompt", "generate", "_copy"))
            and "self.__class__" in inspect.getsource(g.PromptProcessingBatch._copy),  # a split keeps the class
            "mlx_lm.generate.GenerationBatch": callable(getattr(g.GenerationBatch, "next", None)),
            "BatchGenerator._prompt_batch": isinstance(gen._prompt_batch, g.PromptProcessingBatch),
            "BatchGenerator._generation_batch": isinstance(gen._generation_batch, g.GenerationBatch),
            "batch.uids": all(isinstance(b.uids, list) for b in (gen._prompt_batch, gen._generation_batch)),
            "batch.prompt_cache": all(hasattr(b, "prompt_cache") for b in (gen._prompt_batch, gen._generation_batch)),
        }
    finally:
        gen.close()
    assert set(checks) == set(generator_rows.INTERNALS)  # every internal named there is checked here
    assert [name for name, ok in checks.items() if not ok] == []
