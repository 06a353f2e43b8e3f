"""Running a planned request on the engine and answering it: one JSON body, or an SSE stream.

The engine's events cross from its worker thread to the event loop through an asyncio queue.
A stream whose client goes away, or a plain request whose client disconnects while it waits,
cancels its sequence, which leaves the batch before the next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from .engine import Accepted, Busy, Engine, Event, Failed, Finished, Job, Rejected, Stopped, Token
from .errors import ApiError, error_body
from .formats import Format

DISCONNECT_POLL_S = 0.5


class Channel:
    """One job's events on the event loop."""

    def __init__(self, engine: Engine, job: Job):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        try:
            self.ticket = engine.submit(job, self._sink)
        except Busy as exc:
            raise ApiError(429, f"{exc}; retry later", code="queue_full", headers={"Retry-After": "1"}) from None
        except Stopped as exc:
            raise ApiError(503, str(exc), code="engine_stopped") from None

    def _sink(self, event: Event) -> None:  # on the engine's thread
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def accepted(self) -> None:
        """Wait until the job is in the batch.

        Raises:
            ApiError: 400 when the batch refused it, 503 when the engine failed.
        """
        event = await self.queue.get()
        if isinstance(event, Rejected):
            raise ApiError(400, event.message, code="invalid_value")
        if isinstance(event, Failed):
            raise ApiError(503, event.message, code="engine_failed")
        assert isinstance(event, Accepted), event

    async def next(self) -> Event:
        return await self.queue.get()

    def cancel(self) -> None:
        self.ticket.cancel()


async def respond(request: Request, engine: Engine, job: Job, fmt: Format, *, stream: bool,
                  include_usage: bool = False) -> Response:
    """Run ``job`` and answer with ``fmt``: an SSE stream or one JSON body."""
    channel = Channel(engine, job)
    try:
        await channel.accepted()
    except BaseException:
        channel.cancel()
        raise
    if stream:
        return EventSourceResponse(_events(channel, fmt, include_usage), sep="\n", ping=15,
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _whole(request, channel, fmt)


async def _events(channel: Channel, fmt: Format, include_usage: bool) -> AsyncIterator[str]:
    done, n = False, 0
    try:
        yield _json(fmt.head())
        while True:
            event = await channel.next()
            if isinstance(event, Token):
                n += 1
                yield _json(fmt.chunk(event))
            elif isinstance(event, Finished):
                yield _json(fmt.finish(event))
                if include_usage:
                    yield _json(fmt.usage_chunk(n))
                break
            elif isinstance(event, Failed):
                yield _json(error_body(500, event.message, code="generation_failed"))
                break
        done = True
        yield "[DONE]"
    finally:
        if not done:  # the client went away (or the stream was closed): free the row now
            channel.cancel()


async def _whole(request: Request, channel: Channel, fmt: Format) -> Response:
    tokens: list[Token] = []
    getter: asyncio.Task | None = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(channel.next())
            finished, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if not finished:
                if await request.is_disconnected():
                    channel.cancel()
                    return Response(status_code=499)
                continue
            event, getter = getter.result(), None
            if isinstance(event, Token):
                tokens.append(event)
            elif isinstance(event, Finished):
                return JSONResponse(fmt.response(tokens, event))
            elif isinstance(event, Failed):
                raise ApiError(500, event.message, code="generation_failed")
    finally:
        if getter is not None:
            getter.cancel()
        channel.cancel()  # no-op once finished


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
