"""What every router shares: the server's state and the API-key check (FastAPI dependencies)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from .engine import Engine
from .errors import ApiError
from .planning import Planner
from .registry import VectorRegistry


@dataclass
class ServerState:
    """One served model: its engine, planner, vectors, public id and limits."""

    model: Any
    model_id: str
    engine: Engine
    planner: Planner
    vectors: VectorRegistry
    api_key: str | None = None
    backend: str = "mlx"
    created: int = 0


def get_server(request: Request) -> ServerState:
    return request.app.state.server


def require_key(request: Request) -> None:
    """With ``--api-key``, requests must carry ``Authorization: Bearer KEY`` (or ``x-api-key``)."""
    key = get_server(request).api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not given:
        raise ApiError(401, "this server needs an API key: send 'Authorization: Bearer KEY'", code="missing_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
