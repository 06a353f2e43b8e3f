"""Installed hooks: the handle that owns a call's site programs until removed (:class:`Hooks`), and
the registry of a model's live handles (:class:`HookRegistry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .activations import Activations
from .compiling import CompiledSteering, compile_steering, site_program
from .gating import GatedOp

from .paths import Site
from .plan import SitePlan, as_interventions, plan_sites
from .site_program import SiteProgram, Watch

if TYPE_CHECKING:
    from .arrays import Undo
    from .protocols import Backend

__all__ = ["HookRegistry", "Hooks", "SiteProgram", "Watch"]


class HookRegistry:
    """A model's live :class:`Hooks` (installed and not yet removed), so that all of them can be
    removed at once and a sharded backend can gather what they recorded."""

    def __init__(self) -> None:
        self._live: dict[int, Hooks] = {}

    def add(self, hooks: Hooks) -> None:
        self._live[id(hooks)] = hooks

    def discard(self, hooks: Hooks) -> None:
        self._live.pop(id(hooks), None)

    def live(self) -> list[Hooks]:
        """The live handles, oldest first."""
        return list(self._live.values())


class Hooks:
    """Installed interventions and recorders; undone by :meth:`remove` (or leaving ``with``).

    Every site's ops are compiled (validated) before anything is attached, so bad input leaves
    the model untouched; a failure while attaching undoes what was done. ``activations`` holds
    what the recorders collected so far (concatenated over forwards). Interventions for one
    batch row can be assigned and released while the hooks stay installed (:meth:`assign`).

    Args:
        backend: The backend the sites are attached with.
        plans: What to install at each site (see :func:`~mlx_steer.engine.plan.plan_sites`).
        reduce: How recorders reduce positions (None, ``"mean"``).
        registry: The model's registry of live hooks (this handle is in it until removed).
    """

    def __init__(self, backend: Backend, plans: Mapping[str, SitePlan], reduce: str | None, *,
                 registry: HookRegistry | None = None):
        self._backend, self._registry = backend, registry
        self._undo: list[Undo] = []
        if registry is not None:
            registry.add(self)  # until removed, dropped or not
        self._readers: dict[int, list[tuple[SiteProgram, Any]]] = {}  # id(gated op) -> where its readers are
        try:
            self._programs = {key: site_program(backend, plan, reduce) for key, plan in plans.items()}
            self.recorders = {k: p.recorder for k, p in self._programs.items() if p.recorder is not None}
            for program in list(self._programs.values()):
                self._place_readers(program.ops, attach=False)
            backend.state.track_spans([op.sel for p in self._programs.values() for op in p.ops] +
                                      [r.positions for r in self.recorders.values()])
            self._undo.append(backend.attach_tracker())
            for program in self._programs.values():
                self._attach(program)
        except BaseException:
            self.remove()
            raise
        self.activations = Activations({k: r.result for k, r in self.recorders.items()},
                                       lambda site: backend.resolver.resolve(site).key)

    def _attach(self, program: SiteProgram) -> None:
        self._undo.append(self._backend.attach(program.site.path, program.site.point, program))

    def _program(self, site: Site, *, attach: bool = True) -> SiteProgram:
        program = self._programs.get(site.key)
        if program is None:
            program = self._programs[site.key] = SiteProgram(site, [], None, self._backend.state)
            if attach:
                self._attach(program)
        return program

    def _place_readers(self, ops: list, *, attach: bool = True) -> None:
        """Install the condition readers of gated ops at their sites (read before any intervention there)."""
        for op in ops:
            if isinstance(op, GatedOp):
                placed = self._readers.setdefault(id(op), [])
                for site, reader in op.reader_sites():
                    program = self._program(site, attach=attach)
                    program.readers.append(reader)
                    placed.append((program, reader))

    def conditions(self, row: int) -> list[dict[str, Any]]:
        """Row ``row``'s conditions, once its prompt was read: one entry per gating rule, ``{"met":
        bool, "values": {condition name: measured value}}`` (empty when nothing gates the row)."""
        out: dict[int, dict[str, Any]] = {}
        for program in self._programs.values():
            for op in program.ops:
                if isinstance(op, GatedOp) and id(op.rule) not in out and (op.rows is None or row in op.rows):
                    decided = op.decision(row)
                    if decided is not None:
                        out[id(op.rule)] = {"met": decided[0], "values": decided[1]}
        return list(out.values())

    def assign(self, row: int, interventions: Mapping | Any = None, *,
               steering: CompiledSteering | None = None) -> None:
        """Steer batch row ``row`` (a row key) with ``interventions`` from the next forward on,
        replacing what it had. Validated in full before anything changes; ``steering``: the
        interventions already planned and compiled (:func:`~mlx_steer.engine.compiling.compile_steering`)."""
        if steering is None:
            plans = plan_sites(self._backend.resolver, interventions=as_interventions(interventions), record=None)
            steering = compile_steering(self._backend, plans)
        scoped = steering.for_row(row)
        self._backend.state.track_spans([op.sel for _, ops in scoped.values() for op in ops])
        self.release(row)
        for site, ops in scoped.values():
            self._program(site).ops.extend(ops)
            self._place_readers(ops)

    def watch(self, site: str | Site, *, before_interventions: bool = False, only: Any = None) -> Watch:
        """Start reading ``site``'s last position of every row at each forward (see :class:`Watch`);
        ``before_interventions`` reads the model's own value rather than the steered one."""
        resolved = self._backend.resolver.resolve(site)
        watch = Watch(resolved, self._backend.state, before_interventions=before_interventions, only=only)
        self._program(resolved).watches.append(watch)
        return watch

    def release(self, row: int) -> None:
        """Drop the interventions :meth:`assign` gave row ``row`` (other rows keep theirs)."""
        only = frozenset({row})
        for program in self._programs.values():
            gone = [op for op in program.ops if op.rows == only]
            program.ops = [op for op in program.ops if op.rows != only]
            for op in gone:
                for where, reader in self._readers.pop(id(op), []):
                    where.readers.remove(reader)

    def remove(self) -> None:
        """Undo every patch this object made, newest first (idempotent)."""
        while self._undo:
            self._undo.pop()()
        if self._registry is not None:
            self._registry.discard(self)

    def flush(self) -> None:
        """Hand pending recordings to the backend at a loop boundary (MLX schedules them)."""
        pending = [a for r in self.recorders.values() for a in r.pending()]
        if pending:
            self._backend.xp.schedule(pending)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
