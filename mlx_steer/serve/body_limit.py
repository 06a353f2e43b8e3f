"""The request-body limit, enforced while the body is read (chunked bodies have no Content-Length).

A body whose Content-Length is over the limit is refused before any of it is read. Any other body
is counted as the application receives it: the moment the count passes the limit, the client gets
413 (the OpenAI-style error body), the application is told the client went away (so it stops
reading and buffers nothing more), and whatever it answers after that is dropped — one response per
request. The server (uvicorn) discards the rest of the body as it arrives and keeps the connection
usable for the next request.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, however they are sent."""

    def __init__(self, app: ASGIApp, *, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 already answered this request
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(errors.error_body(413, f"the request body is over {self.limit} bytes",
                                            code="body_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
