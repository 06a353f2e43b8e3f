"""``POST /v1/chat/completions``: the model's chat template, optional steering and monitors."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..deps import ServerState, get_server, require_key
from ..formats import ChatFormat
from ..responses import respond
from ..schemas import ChatCompletionRequest
from .models import check_model

router = APIRouter(prefix="/v1/chat", tags=["chat"], dependencies=[Depends(require_key)])


@router.post("/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           server: ServerState = Depends(get_server)) -> Response:
    check_model(server, body.model)
    plan = await run_in_threadpool(server.planner.chat, body)  # tokenizing is off the event loop
    fmt = ChatFormat(plan, model_id=server.model_id, decode=server.model.prompts.decode,
                     token_ids=body.return_token_ids)
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(request, server.engine, plan.job, fmt, stream=body.stream, include_usage=usage)
