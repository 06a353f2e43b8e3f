"""The FastAPI application: routers, error handlers, the playground's files, the engine's lifetime."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..engine.limits import declared_context
from ..vectors.steering_vector import SteeringVector
from . import errors
from .body_limit import BodyLimit
from .deps import ServerState
from .engine import Engine
from .planning import DEFAULT_MAX_TOKENS, Planner
from .registry import VectorRegistry
from .routers import chat, completions, health, models, playground
from .routers import vectors as vector_routes

MAX_BODY = 8 * 1024 * 1024  # bytes; an inline vector of 65536 floats fits
def create_app(
    model: Any,
    *,
    model_id: str,
    vectors: VectorRegistry | Mapping[str, SteeringVector] | None = None,
    api_key: str | None = None,
    backend: str = "mlx",
    context_length: int | None = None,
    max_batch: int = 32,
    prefill_batch: int = 8,
    max_queue: int = 64,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    saes: Mapping[str, Any] | None = None,
) -> FastAPI:
    """An OpenAI-compatible app serving ``model`` with per-request steering.

    The engine's worker thread starts with the app (its lifespan) and stops with it.

    Args:
        model: A steerable model of either backend (loaded once; the server owns it).
        model_id: The name clients give as ``model``.
        vectors: Registered vectors (a :class:`VectorRegistry`, or ``{name: SteeringVector}``).
        api_key: When set, every ``/v1`` request needs ``Authorization: Bearer KEY``.
        backend: ``"mlx"`` or ``"torch"`` (shown by ``/v1/models``).
        context_length: The model's context window (see :func:`context_length_of`); None: unknown.
        max_batch: Sequences decoded together.
        prefill_batch: Prompts prefilled together.
        max_queue: Requests held at most (running and waiting); more get 429.
        default_max_tokens: ``max_tokens`` when a request gives none.
        saes: Registered sparse autoencoders (``{name: SparseAutoencoder}``): a steering entry adds or
            clamps one of their features.

    Raises:
        ValueError: bad limits, or a vector that does not fit the model.
    """
    registry = vectors if isinstance(vectors, VectorRegistry) else VectorRegistry(model, vectors)
    engine = Engine(model, max_batch=max_batch, prefill_batch=prefill_batch, max_queue=max_queue)
    planner = Planner(model, registry, context_length=context_length, default_max_tokens=default_max_tokens,
                      saes=saes)
    state = ServerState(model, model_id, engine, planner, registry, api_key=api_key or None, backend=backend,
                        created=int(time.time()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="mlx-steer serve", summary="OpenAI-compatible completions with per-request steering",
                  lifespan=lifespan)
    app.state.server = state
    errors.install(app)
    for r in (models.router, vector_routes.router, chat.router, completions.router, health.router, playground.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=str(playground.STATIC)), name="static")
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app


def context_length_of(model_path: str | Path) -> int | None:
    """The context window from a model folder's ``config.json`` (None when it does not say)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return declared_context(config)  # what a loaded model's context_length reads too

