"""``POST /v1/completions``: plain text (or token-id) prompts, optional steering and monitors."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..deps import ServerState, get_server, require_key
from ..formats import CompletionFormat
from ..responses import respond
from ..schemas import CompletionRequest
from .models import check_model

router = APIRouter(prefix="/v1", tags=["completions"], dependencies=[Depends(require_key)])


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request,
                      server: ServerState = Depends(get_server)) -> Response:
    check_model(server, body.model)
    plan = await run_in_threadpool(server.planner.completion, body)
    fmt = CompletionFormat(plan, model_id=server.model_id, decode=server.model.prompts.decode,
                           token_ids=body.return_token_ids)
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(request, server.engine, plan.job, fmt, stream=body.stream, include_usage=usage)
