"""``mlx-steer serve``: an OpenAI-compatible server with per-request steering, and a playground.

    mlx-steer serve --model PATH --vector love=love.safetensors      # or: python -m mlx_steer.serve

Requests with different steering run together in one continuous batch (the model's
``batch_generator``), each steered only by its own ``steering`` field; ``monitor`` streams every
token's projection on a vector. Modules: :mod:`.app` (the FastAPI app), :mod:`.routers` (one per
resource), :mod:`.schemas` (request bodies), :mod:`.planning` (request -> engine job),
:mod:`.engine` (the worker thread, no HTTP), :mod:`.registry` (named vectors), ``static/`` (the
playground). Needs the ``serve`` extra (fastapi, uvicorn, sse-starlette).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imports FastAPI: only when asked for
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'mlx_steer.serve' has no attribute {name!r}")
