"""The server's engine: one worker thread owns the model and its continuous batch.

Requests come in as :class:`Job` objects through :meth:`Engine.submit`, which answers at once
(or raises :class:`Busy` when the bounded queue is full); the worker inserts them into the
model's ``batch_generator`` between steps, so sequences with different steering run together,
and hands every result to the job's ``sink`` (a callable, called from the worker thread):
:class:`Accepted` or :class:`Rejected` first, then one :class:`Token` per generated token and a
final :class:`Finished` (or :class:`Failed`). :meth:`Ticket.cancel` drops a sequence before the
next step. Nothing here knows about HTTP.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.compiling import CompiledSteering
from ..engine.continuous import Monitor
from ..engine.text_stream import TextStream


@dataclass(frozen=True)
class Job:
    """One generation request, ready for the engine.

    Attributes:
        prompt: Token ids.
        max_tokens: Tokens to generate at most.
        interventions: ``{site: intervention(s)}`` for this sequence only (None: unsteered).
        monitors: ``{name: Monitor}`` read for every token.
        sampling: ``temp, top_p, top_k, min_p, repetition_penalty, seed`` for the batch's sampler.
        stop: Strings that end the text (not included in it).
        top_logprobs: None for no log-probabilities; k >= 0 for the token's own plus the top k.
        steering: ``interventions`` planned, checked and compiled once, by the planner
            (``model.compile_steering``): what the batch gets when given (None: the batch plans
            ``interventions`` itself).
    """

    prompt: list[int]
    max_tokens: int
    interventions: dict[str, Any] | None = None
    monitors: dict[str, Monitor] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    steering: CompiledSteering | None = None


@dataclass(frozen=True)
class Accepted:
    """The job is in the batch."""


@dataclass(frozen=True)
class Rejected:
    """The batch refused the job (bad interventions, positions, options): nothing ran."""

    message: str


@dataclass(frozen=True)
class Token:
    """One generated token and the text it released (may be empty: held back until complete)."""

    token: int
    text: str
    projections: dict[str, float]
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass(frozen=True)
class Finished:
    """The sequence ended: ``"stop"`` (EOS or a stop string) or ``"length"``; ``text`` is the
    last released piece; ``full_text`` all of it."""

    reason: str
    text: str
    full_text: str
    conditions: list[dict[str, Any]] | None = None  # conditional steering's decisions on the prompt


@dataclass(frozen=True)
class Failed:
    """The engine failed while this job ran (the server goes on with a fresh batch)."""

    message: str


Event = Accepted | Rejected | Token | Finished | Failed


class Busy(RuntimeError):
    """The engine holds as many sequences as it may queue."""


class Stopped(RuntimeError):
    """The engine is not running."""


class Ticket:
    """A submitted job; :meth:`cancel` drops it (e.g. its client went away)."""

    def __init__(self, engine: Engine, job: Job, sink: Callable[[Event], None]):
        self.engine, self.job, self.sink = engine, job, sink
        self.uid: int | None = None
        self.done = False

    def cancel(self) -> None:
        """Drop the sequence before the engine's next step (no-op once it finished)."""
        if not self.done:
            self.engine.cancel(self)


class _Live:
    """A sequence in the batch: its ticket and text."""

    def __init__(self, ticket: Ticket, decode: Callable[[list[int]], str]):
        self.ticket = ticket
        self.text = TextStream(decode, ticket.job.stop)
        self.conditions: list[dict[str, Any]] | None = None


class Engine:
    """A worker thread running the model's continuous batch.

    Args:
        model: A steerable model (either backend).
        max_batch: Sequences decoded together (``completion_batch_size``).
        prefill_batch: Prompts prefilled together.
        max_queue: Sequences held at most (running and waiting); :meth:`submit` raises
            :class:`Busy` beyond it.
    """

    def __init__(self, model: Any, *, max_batch: int = 32, prefill_batch: int = 8, max_queue: int = 64):
        for name, value in (("max_batch", max_batch), ("prefill_batch", prefill_batch), ("max_queue", max_queue)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.model = model
        self.max_batch, self.prefill_batch, self.max_queue = max_batch, prefill_batch, max_queue
        self.batching = "continuous"  # "serial" when the backend has no batch_generator
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._open = 0  # submitted and not yet finished
        self._live: dict[int, _Live] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.counts = {"requests": 0, "tokens": 0, "cancelled": 0, "rejected": 0, "busy": 0, "failures": 0}
        self.started_at = time.time()

    # -- the caller's side (any thread) ---------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="mlx-steer-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; running sequences end with :class:`Failed`."""
        if self._thread is not None:
            self._stopping.set()
            self._inbox.put(("stop", None))
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def submit(self, job: Job, sink: Callable[[Event], None]) -> Ticket:
        """Queue ``job``; ``sink`` receives its events on the worker thread.

        Raises:
            Busy: ``max_queue`` sequences are already held.
            Stopped: the engine is not running.
        """
        if not self.running:
            raise Stopped("the engine is not running")
        with self._lock:
            if self._open >= self.max_queue:
                self.counts["busy"] += 1
                raise Busy(f"the server holds {self._open} requests, its limit (--max-queue {self.max_queue})")
            self._open += 1
            self.counts["requests"] += 1
        ticket = Ticket(self, job, sink)
        self._inbox.put(("insert", ticket))
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop ``ticket``'s sequence before the next step (done on the worker thread)."""
        self._inbox.put(("cancel", ticket))

    def stats(self) -> dict[str, Any]:
        """Counters and the current load."""
        with self._lock:
            held = self._open
        return {"running": self.running, "batching": self.batching, "active": len(self._live), "held": held,
                "max_batch": self.max_batch, "max_queue": self.max_queue, **self.counts,
                "uptime_s": round(time.time() - self.started_at, 1)}

    # -- the worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        gen = None
        try:
            while not self._stopping.is_set():
                if gen is None:
                    gen = self._new_batch()
                self._take_commands(gen, block=not self._live)
                if not self._live or self._stopping.is_set():
                    continue
                try:
                    events = gen.step()
                except Exception as exc:  # a fault in the model loop: fail these jobs, start afresh
                    self.counts["failures"] += 1
                    self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
                    gen.close()
                    gen = None
                    continue
                self._deliver(gen, events)
        finally:
            self._fail_all("the server is shutting down")
            self._drain_inbox()
            if gen is not None:
                gen.close()

    def _new_batch(self) -> Any:
        try:
            return self.model.batch_generator(completion_batch_size=self.max_batch,
                                              prefill_batch_size=self.prefill_batch)
        except NotImplementedError:  # a backend without continuous batching: one sequence at a time
            from .serial import SerialBatch

            self.batching = "serial"
            return SerialBatch(self.model)

    def _take_commands(self, gen: Any, *, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.1) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, ticket = command
            if kind == "insert":
                self._insert(gen, ticket)
            elif kind == "cancel":
                self._cancel(gen, ticket)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _insert(self, gen: Any, ticket: Ticket) -> None:
        job = ticket.job
        try:
            steer = ({"interventions": job.interventions} if job.steering is None or self.batching == "serial"
                     else {"steering": job.steering})
            uid = gen.insert(job.prompt, max_tokens=job.max_tokens, monitors=job.monitors, **steer, **job.sampling)
        except (ValueError, TypeError) as exc:
            self.counts["rejected"] += 1
            self._close(ticket, Rejected(str(exc)))
            return
        ticket.uid = uid
        self._live[uid] = _Live(ticket, self.model.prompts.decode)
        ticket.sink(Accepted())

    def _cancel(self, gen: Any, ticket: Ticket) -> None:
        if ticket.done or ticket.uid not in self._live:
            return
        gen.remove(ticket.uid)
        del self._live[ticket.uid]
        self.counts["cancelled"] += 1
        self._close(ticket, None)

    def _deliver(self, gen: Any, events: list) -> None:
        for e in events:
            live = self._live.get(e.uid)
            if live is None:
                continue
            job, text = live.ticket.job, live.text
            reason = e.finish_reason
            if getattr(e, "conditions", None) is not None:
                live.conditions = e.conditions
            if reason != "stop":  # "stop" from the batch comes with the EOS, which is not text
                self.counts["tokens"] += 1
                piece = text.add(e.token)
                lp, top = _logprobs(e.logprobs, e.token, job.top_logprobs)
                live.ticket.sink(Token(e.token, piece, dict(e.projections), lp, top))
                if text.stopped:
                    if reason is None:
                        gen.remove(e.uid)
                    reason = "stop"
            if reason is not None:
                del self._live[e.uid]
                self._close(live.ticket, Finished(reason, text.flush(), text.text, live.conditions))

    def _close(self, ticket: Ticket, event: Event | None) -> None:
        ticket.done = True
        with self._lock:
            self._open -= 1
        if event is not None:
            ticket.sink(event)

    def _fail_all(self, message: str) -> None:
        for live in list(self._live.values()):
            self._close(live.ticket, Failed(message))
        self._live.clear()

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, ticket = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "insert" and not ticket.done:
                self._close(ticket, Failed("the server is shutting down"))


def _logprobs(logprobs: np.ndarray, token: int, k: int | None) -> tuple[float | None, list[tuple[int, float]] | None]:
    """The token's log-probability and the top ``k`` (id, log-probability), best first."""
    if k is None:
        return None, None
    lp = float(logprobs[token])
    if k == 0:
        return lp, []
    k = min(k, logprobs.shape[0])
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return lp, [(int(i), float(logprobs[i])) for i in idx]
