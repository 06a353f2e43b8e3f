"""``GET /health``: whether the engine runs, and its load and counters (no key needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..deps import ServerState, get_server

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(server: ServerState = Depends(get_server)) -> JSONResponse:
    stats: dict[str, Any] = server.engine.stats()
    ok = stats["running"]
    return JSONResponse({"status": "ok" if ok else "stopped", **stats}, status_code=200 if ok else 503)
