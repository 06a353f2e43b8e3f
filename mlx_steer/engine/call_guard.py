"""One call at a time per model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class CallGuard:
    """One call at a time per model: a call's hooks, positions and layout live on the model, so
    two calls overlapping (two threads, two interleaved generators, a forward started from inside
    an intervention) would steer each other's rows. Overlap raises a clear error instead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active: tuple[str, int] | None = None

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        me = threading.get_ident()
        with self._lock:
            if self.active is not None:
                other, thread = self.active
                where = ("another thread" if thread != me else
                         "this thread: an unfinished stream_generate, or a forward started from inside an intervention")
                raise RuntimeError(
                    f"{what} started while this model is still running {other} (in {where}); a model runs one "
                    "call at a time: finish or close the other first, or load one model per thread"
                )
            self.active = (what, me)
        try:
            yield
        finally:
            self.active = None
