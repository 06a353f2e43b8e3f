"""The engine's generation loops over a backend's: one sequence streamed with its text decoded once
for every backend and its logits checked, and a batch whose rows each generate what they would alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any

from .hooks import HookRegistry, Hooks
from .layout import Layout
from .text_stream import TextStream

if TYPE_CHECKING:
    from .call_guard import CallGuard
    from .plan import SitePlan
    from .protocols import Backend

__all__ = ["generate_batch", "stream_steps"]


def stream_steps(backend: Backend, tokens: list[int], plans: Mapping[str, SitePlan], *, calls: CallGuard,
                 registry: HookRegistry, max_tokens: int, hooks_out: list | None,
                 options: dict[str, Any]) -> Generator[Any, None, None]:
    """Responses of the backend's loop with ``plans`` installed for the whole generation, each
    response's ``text`` filled in; once it ends, the backend gathers what was recorded (the call's
    own recorders, then those of hooks installed around it)."""
    around = [h for h in registry.live() if h.recorders]
    with calls("stream_generate"), Hooks(backend, plans, None, registry=registry) as hooks:
        if hooks_out is not None:
            hooks_out.append(hooks)
        text = TextStream(backend.prompts.decode)  # the same text for the same tokens on every backend
        # each step's logits are checked for NaN/+inf lazily and read one step later, so the
        # check never waits behind the step the loop has in flight
        checks: list[tuple[int, Any]] = []
        with backend.state.laid_out(Layout([len(tokens)])):
            for n, response in enumerate(backend.stream(tokens, max_tokens=max_tokens, **options)):
                checks.append((n, backend.xp.nonfinite(response.logprobs)))
                hooks.flush()
                backend.xp.schedule([checks[-1][1]])
                if len(checks) > 1:
                    _check_step(backend, *checks.pop(0))
                if response.finish_reason == "stop":  # the EOS is not text
                    segment = text.flush()
                else:
                    segment = text.add(int(response.token))
                    segment += text.flush() if response.finish_reason is not None else ""
                yield dataclasses.replace(response, text=segment)
            for check in checks:
                _check_step(backend, *check)
    backend.gather_recordings([h.recorders for h in [hooks, *around]])


def generate_batch(backend: Backend, tokens: list[list[int]], plans: Mapping[str, SitePlan], *,
                   calls: CallGuard, registry: HookRegistry, max_tokens: int,
                   options: dict[str, Any]) -> tuple[list[list[int]], list[str], list[list[dict[str, Any]]]]:
    """Every row's generated token ids (EOS excluded), finish reason and conditions, in row order."""
    out: list[list[int]] = [[] for _ in tokens]
    reasons = ["length"] * len(tokens)
    with calls("batch_generate"), Hooks(backend, plans, None, registry=registry) as hooks:
        for step in backend.generate_rows(tokens, max_tokens=max_tokens, **options):
            if step.finish_reason == "stop":
                reasons[step.row] = "stop"
            else:
                out[step.row].append(step.token)
        conditions = [hooks.conditions(row) for row in range(len(tokens))]
    return out, reasons, conditions


def _check_step(backend: Backend, n: int, flag: Any) -> None:
    if backend.xp.truth(flag):
        raise ValueError(f"the logits became non-finite (NaN or +inf) at generated token {n}: the "
                         "interventions overflow the activations; use a smaller scale or vector")
