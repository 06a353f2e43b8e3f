"""Which sequences each forward of mlx-lm's ``BatchGenerator`` holds, told by its batches as they run.

The only module that relies on mlx-lm's unexported batch classes (:data:`INTERNALS` lists each name;
``tests/test_generator_rows.py`` checks them against the installed mlx-lm). mlx-lm 0.32's generator
makes every forward from a batch object: its ``_prompt_batch`` (prompt processing), a prompt batch
split off from it for the move to decoding (a copy made through ``__class__``), and its
``_generation_batch`` (decoding). :func:`track` gives the two kept batches a subclass, per generator,
whose forward-running methods register the batch while they run; the forward's rows are that batch's
``uids`` at that moment, checked against the KV cache the forward was given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

INTERNALS = (
    "mlx_lm.generate.PromptProcessingBatch",  # the prompt batch's class: prompt(), generate(), _copy()
    "mlx_lm.generate.GenerationBatch",  # the decoding batch's class: next()
    "BatchGenerator._prompt_batch",  # the kept prompt batch
    "BatchGenerator._generation_batch",  # the kept decoding batch
    "batch.uids",  # a batch's sequences, in row order
    "batch.prompt_cache",  # the KV cache its forwards are given
)
_PROMPT_METHODS = {"prompt": False, "generate": True}  # method -> whether its own forwards decode
_DECODE_METHODS = {"next": True}


class RunningBatches:
    """The batches of one generator that are running a forward now (innermost last)."""

    def __init__(self) -> None:
        self.stack: list[tuple[Any, bool]] = []

    @contextlib.contextmanager
    def running(self, batch: Any, decoding: bool) -> Iterator[None]:
        self.stack.append((batch, decoding))
        try:
            yield
        finally:
            self.stack.pop()

    def current(self, cache: object) -> tuple[list[int], bool]:
        """The uids the forward given ``cache`` holds, in row order, and whether it decodes.

        Raises:
            RuntimeError: the forward is not one of the generator's batches' (or its cache is not the
                running batch's: mlx-lm changed how its batches run).
        """
        if not self.stack:
            raise RuntimeError("a forward inside batch generation that is not one of the BatchGenerator's batches")
        batch, decoding = self.stack[-1]
        if batch.prompt_cache is not cache:
            raise RuntimeError("a forward inside batch generation was not given its batch's KV cache; this mlx-lm "
                               "runs its batches differently from the versions mlx_steer supports")
        return list(batch.uids), decoding


def track(generator: Any) -> RunningBatches:
    """Make ``generator``'s batches register themselves while they run forwards; returns the register."""
    from mlx_lm.generate import GenerationBatch, PromptProcessingBatch

    running = RunningBatches()
    generator._prompt_batch.__class__ = _registering(PromptProcessingBatch, _PROMPT_METHODS, running)
    generator._generation_batch.__class__ = _registering(GenerationBatch, _DECODE_METHODS, running)
    return running


def _registering(base: type, methods: dict[str, bool], running: RunningBatches) -> type:
    """A subclass of ``base`` (same name) whose ``methods`` run inside ``running.running(self, ...)``."""

    def wrap(name: str, decoding: bool) -> Any:
        original = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            with running.running(self, decoding):
                return original(self, *args, **kwargs)

        method.__name__ = method.__qualname__ = name
        return method

    cls = type(base.__name__, (base,), {name: wrap(name, d) for name, d in methods.items()})
    cls.__module__, cls.__qualname__ = base.__module__, base.__qualname__
    return cls
