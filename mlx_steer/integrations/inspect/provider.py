"""``MlxSteerAPI``: Inspect's ``ModelAPI`` over mlx-steer's server engine.

The model loads once; every generate call becomes the server's chat request (:mod:`.requests`),
planned by the server's :class:`~mlx_steer.serve.planning.Planner` (chat template, steering,
monitors, limits) and submitted to its :class:`~mlx_steer.serve.engine.Engine`, whose worker
thread runs the model's continuous batch: samples Inspect runs concurrently (``max_connections``)
are decoded together, each with its own steering. The output's metadata carries the steering as
planned, the generated token ids, each monitor's projection for every token, and ``batch_peak``
(the most sequences the batch held while this one generated).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

import anyio
from inspect_ai._util.error import PrerequisiteError
from inspect_ai.model import (ChatCompletionChoice, ChatMessage, ChatMessageAssistant, GenerateConfig, ModelAPI,
                              ModelOutput, ModelUsage)
from inspect_ai.tool import ToolChoice, ToolInfo

from ...serve.engine import Accepted, Engine, Event, Failed, Finished, Rejected, Token
from ...serve.planning import FieldError, Plan, Planner
from ...serve.registry import VectorRegistry
from ...serve.schemas import ChatCompletionRequest
from .options import OptionError, ProviderOptions, parse_options
from .requests import RequestError, chat_request

_POLL_S = 0.005  # how often a waiting sample looks for its result (cancellable, unlike a thread wait)


class MlxSteerAPI(ModelAPI):
    """``--model mlx_steer/PATH``: a model folder (or cached hub id) steered per the model args.

    Args:
        model_name: The model folder or hub id (what follows ``mlx_steer/``).
        base_url: Not used (a local model).
        api_key: Not used.
        config: Inspect's generate config.
        model_args: See :mod:`.options` (``vector, vectors, scale, layers, positions, sae, feature,
            clamp, monitor, backend, device, max_batch, max_tokens``).

    Raises:
        PrerequisiteError: a bad model arg, a missing file, a vector or SAE that does not fit the
            model, or default steering the model cannot take (Inspect prints it without a traceback).
    """

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any):
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        try:
            self.options = parse_options(model_args)
            self.model = self._load(model_name, self.options)
            self.planner = self._planner(self.model, self.options)
            self._plan(self._probe())  # the default steering fits this model
        except (OptionError, RequestError, ValueError, FileNotFoundError, ImportError) as exc:
            raise PrerequisiteError(f"mlx_steer/{model_name}: {exc}") from None
        self.engine = Engine(self.model, max_batch=self.options.max_batch, max_queue=4096)
        self.engine.start()
        # Inspect's CLI never closes its models: stop the worker at exit, before the interpreter
        # tears down under a thread still inside the model (which aborts the process)
        weakref.finalize(self, self.engine.stop)

    @staticmethod
    def _load(model_name: str, options: ProviderOptions) -> Any:
        from ...loading import load

        return load(model_name, backend=options.backend, device=options.device)

    @staticmethod
    def _planner(model: Any, options: ProviderOptions) -> Planner:
        registry = VectorRegistry(model)
        for name, path in options.vectors:
            registry.add_file(name, path)
        saes = {}
        if options.sae is not None:
            from ...sae import load_sae

            saes["sae"] = load_sae(options.sae, model=model)
        return Planner(model, registry, context_length=getattr(model, "context_length", None),
                       default_max_tokens=options.max_tokens, saes=saes)

    def _probe(self) -> dict[str, Any]:
        """A one-message request with the default steering and max_tokens (positions are checked against them)."""
        return chat_request([], GenerateConfig(), options=self.options, model_id=self.model_name,
                            metadata=None, has_tools=False) | {"messages": [{"role": "user", "content": "hi"}]}

    def _plan(self, request: dict[str, Any]) -> Plan:
        try:
            return self.planner.chat(ChatCompletionRequest.model_validate(request))
        except FieldError as exc:
            raise RequestError(f"{exc.param}: {exc}" if exc.param else str(exc)) from None

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        metadata = _sample_metadata()
        request = chat_request(input, config, options=self.options, model_id=self.model_name, metadata=metadata,
                               has_tools=bool(tools))
        plan = self._plan(request)
        result = _Result(self.engine)
        ticket = self.engine.submit(plan.job, result.sink)
        try:
            while not result.done.is_set():
                await anyio.sleep(_POLL_S)
        except BaseException:  # cancelled (time limit, Ctrl-C): the sequence leaves the batch
            ticket.cancel()
            raise
        return result.output(self.model_name, plan)

    def max_connections(self) -> int:
        """As many samples at once as the batch decodes together."""
        return self.options.max_batch

    def max_tokens(self) -> int | None:
        return self.options.max_tokens

    def close(self) -> None:
        """Stop the engine's worker thread (its batch's hooks come off)."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()


class _Result:
    """One sequence's events, gathered on the engine's thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.done = threading.Event()
        self.tokens: list[int] = []
        self.projections: dict[str, list[float]] = {}
        self.final: Finished | None = None
        self.error: str | None = None
        self.peak = 0

    def sink(self, event: Event) -> None:
        if isinstance(event, Accepted):
            return
        if isinstance(event, Token):
            self.tokens.append(event.token)
            for name, value in event.projections.items():
                self.projections.setdefault(name, []).append(value)
            self.peak = max(self.peak, self.engine.stats()["active"])
            return
        if isinstance(event, Finished):
            self.final = event
        elif isinstance(event, (Rejected, Failed)):
            self.error = event.message
        self.done.set()

    def output(self, model_name: str, plan: Plan) -> ModelOutput:
        if self.final is None:
            raise RequestError(f"mlx_steer/{model_name}: {self.error or 'the sequence was dropped'}")
        n = len(self.tokens)
        message = ChatMessageAssistant(content=self.final.full_text, model=model_name, source="generate")
        choice = ChatCompletionChoice(message=message, stop_reason="stop" if self.final.reason == "stop" else "max_tokens")
        metadata = {"steering": plan.steering, "monitor": plan.monitor, "projections": self.projections,
                    "tokens": self.tokens, "batch_peak": self.peak}
        if self.final.conditions is not None:
            metadata["conditions"] = self.final.conditions
        usage = ModelUsage(input_tokens=plan.prompt_tokens, output_tokens=n, total_tokens=plan.prompt_tokens + n)
        return ModelOutput(model=model_name, choices=[choice], usage=usage, metadata=metadata)


def _sample_metadata() -> Mapping[str, Any] | None:
    """The running sample's metadata (None outside a sample, e.g. a direct ``model.generate``)."""
    from inspect_ai.solver._task_state import sample_state  # Inspect has no public accessor for it

    state = sample_state()
    return state.metadata if state is not None else None
