"""``GET /v1/vectors``: the registered steering vectors (name, sites, sizes, metadata)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..deps import ServerState, get_server, require_key
from ..errors import ApiError

router = APIRouter(prefix="/v1/vectors", tags=["vectors"], dependencies=[Depends(require_key)])


@router.get("")
async def list_vectors(server: ServerState = Depends(get_server)) -> dict[str, Any]:
    return {"object": "list", "data": [server.vectors.describe(n) for n in server.vectors]}


@router.get("/{name}")
async def get_vector(name: str, server: ServerState = Depends(get_server)) -> dict[str, Any]:
    if name not in server.vectors:
        raise ApiError(404, f"no vector {name!r}; registered: {', '.join(server.vectors) or 'none'}",
                       param="name", code="unknown_vector")
    return server.vectors.describe(name)
