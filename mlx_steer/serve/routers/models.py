"""``GET /v1/models``: the one model this server serves, with what steering needs to know."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..deps import ServerState, get_server, require_key
from ..errors import ApiError

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_key)])


def describe(server: ServerState) -> dict[str, Any]:
    m = server.model
    return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "mlx-steer",
            "backend": server.backend, "batching": server.engine.batching, "num_layers": m.num_layers,
            "hidden_size": m.hidden_size, "vocab_size": m.vocab_size,
            "context_length": server.planner.context_length,
            "chat_template": bool(getattr(m.tokenizer, "chat_template", None))}


def check_model(server: ServerState, name: str) -> None:
    """A request's ``model`` must name the served model (its id or the id's last path part)."""
    if name not in (server.model_id, server.model_id.rstrip("/").rsplit("/", 1)[-1]):
        raise ApiError(404, f"model {name!r} does not exist; this server serves {server.model_id!r}",
                       param="model", code="model_not_found")


@router.get("")
async def list_models(server: ServerState = Depends(get_server)) -> dict[str, Any]:
    return {"object": "list", "data": [describe(server)]}


@router.get("/{model_id:path}")
async def get_model(model_id: str, server: ServerState = Depends(get_server)) -> dict[str, Any]:
    check_model(server, model_id)
    return describe(server)
