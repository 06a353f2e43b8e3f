"""From a validated request to an engine :class:`~mlx_steer.serve.engine.Job`: prompt tokens,
steering interventions, monitors, sampling and limits, each checked against the model.

Errors are :class:`FieldError` s naming the request field at fault (``steering[0].layers``); the
web layer turns them into 400 responses. Nothing here runs the model or knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import interventions as iv
from ..engine.continuous import Monitor
from ..engine.positions import Positions, as_positions
from ..vectors.calibrated_units import calibrated_vector
from ..engine.span_book import TokenFacts
from ..engine.span_markers import Marker
from ..heads.steering import add_to_heads, head_shape
from .engine import Job
from .registry import VectorRegistry
from .steered import SteeredSpans
from .schemas import (MAX_INLINE, ChatCompletionRequest, CompletionRequest, ConditionSpec, GenerationRequest, MonitorSpec,
                      SteeringSpec)

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_WITHOUT_CONTEXT = 32768  # when the model's context length is unknown


class FieldError(ValueError):
    """A request value the model cannot take; ``param`` names the field (``steering[0].scale``)."""

    def __init__(self, param: str | None, message: str, *, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Plan:
    """A request ready to run: the job, and what the response echoes."""

    job: Job
    prompt_tokens: int
    steering: list[dict[str, Any]] | None
    monitor: list[dict[str, Any]] | None
    spans: SteeredSpans | None = None  # which tokens the steering covered, monitors by span
    loops: bool = False  # report each choice's repetition loops


class Planner:
    """Plans requests for one model.

    Args:
        model: The served model (its tokenizer, paths and sizes are read; steering is compiled for it).
        vectors: The registered vectors.
        context_length: The model's context window in tokens (None: unknown).
        default_max_tokens: ``max_tokens`` when a request gives none (cut to fit the context).
    """

    def __init__(self, model: Any, vectors: VectorRegistry, *, context_length: int | None = None,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS, saes: Mapping[str, Any] | None = None):
        self.model, self.vectors, self.saes = model, vectors, dict(saes or {})
        self.context_length, self.default_max_tokens = context_length, default_max_tokens
        self.facts = TokenFacts(model.tokenizer)  # resolves responses' spans on the event loop's thread

    # -- requests ------------------------------------------------------------------------------
    def chat(self, req: ChatCompletionRequest) -> Plan:
        prompt = self._chat_tokens(req)
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs: true")
        return self._plan(req, prompt, "messages", req.max_completion_tokens or req.max_tokens, top)

    def completion(self, req: CompletionRequest) -> Plan:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise FieldError("prompt", f"one prompt per request, got {len(prompt)}")
            prompt = prompt[0]
        try:
            ids = self.model.encode(prompt)
        except (ValueError, TypeError) as exc:
            raise FieldError("prompt", str(exc)) from None
        return self._plan(req, ids, "prompt", req.max_tokens, req.logprobs)

    # -- parts ---------------------------------------------------------------------------------
    def _chat_tokens(self, req: ChatCompletionRequest) -> list[int]:
        tok = self.model.tokenizer
        if not getattr(tok, "chat_template", None):
            raise FieldError("messages", "this model's tokenizer has no chat template; use /v1/completions")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.model.prompts.check_ids(list(tok.encode(text, add_special_tokens=False)))
        except Exception as exc:  # the template is the model's own code (jinja raise_exception ...)
            raise FieldError("messages", f"the chat template cannot format these messages: {exc}") from None
        if not ids:
            raise FieldError("messages", "the messages encode to no tokens")
        return ids

    def _plan(self, req: GenerationRequest, prompt: list[int], prompt_field: str, max_tokens: int | None,
              top_logprobs: int | None) -> Plan:
        max_tokens = self._max_tokens(len(prompt), prompt_field, max_tokens)
        interventions, steering, entries = self._steering(req.steering or [], len(prompt) + max_tokens)
        monitors, monitor = self._monitors(req.monitor or [])
        sampling: dict[str, Any] = {"temp": req.temperature, "top_p": req.top_p if req.top_p < 1.0 else 0.0,
                                    "top_k": req.top_k, "min_p": req.min_p}
        if req.repetition_penalty is not None:
            sampling["repetition_penalty"] = req.repetition_penalty
        if req.seed is not None:
            sampling["seed"] = req.seed
        if req.ignore_eos:
            sampling["logits_processors"] = [self.model.ban_tokens_processor(sorted(self.model.eos_token_ids))]
        compiled = None
        if interventions is not None:  # resolved, checked and compiled here, once: the batch takes it as is
            try:
                compiled = self.model.compile_steering(interventions, prompt_len=len(prompt), max_tokens=max_tokens)
            except ValueError as exc:
                raise FieldError("steering", str(exc)) from None
        job = Job(prompt, max_tokens, interventions, monitors, sampling, tuple(req.stop or ()), top_logprobs,
                  steering=compiled)
        return Plan(job, len(prompt), steering if req.steering is not None else None,
                    monitor if req.monitor is not None else None, SteeredSpans(tuple(entries), self.facts),
                    loops=req.loops)

    def _max_tokens(self, prompt_len: int, prompt_field: str, asked: int | None) -> int:
        ctx = self.context_length
        if ctx is None:
            if asked is not None and asked > MAX_TOKENS_WITHOUT_CONTEXT:
                raise FieldError("max_tokens", f"max_tokens {asked} is above this server's limit of "
                                 f"{MAX_TOKENS_WITHOUT_CONTEXT}")
            return asked or self.default_max_tokens
        if prompt_len >= ctx:
            raise FieldError(prompt_field, f"the prompt has {prompt_len} tokens; this model's context length is "
                             f"{ctx}, which leaves no room to generate", code="context_length_exceeded")
        if asked is None:
            return min(self.default_max_tokens, ctx - prompt_len)
        if prompt_len + asked > ctx:
            raise FieldError("max_tokens", f"this model's context length is {ctx} tokens; the prompt ({prompt_len}) "
                             f"+ max_tokens ({asked}) is {prompt_len + asked}; at most {ctx - prompt_len} "
                             "tokens can be generated", code="context_length_exceeded")
        return asked

    def _steering(self, specs: list[SteeringSpec], limit: int
                  ) -> tuple[dict[str, list] | None, list[dict], list[tuple[Positions, bool]]]:
        out: dict[str, list] = {}
        echo, entries = [], []
        for i, spec in enumerate(specs):
            where = f"steering[{i}]"
            pos = parse_positions(spec.positions, f"{where}.positions")
            self._check_positions(pos, f"{where}.positions", limit)
            if spec.heads is not None:
                name, ivs, sites = "heads", *self._heads(spec, pos, where)
            elif spec.sae is not None or spec.feature is not None or spec.clamp is not None:
                name, ivs, sites = f"sae:{spec.sae}", *self._sae(spec, pos, where)
            elif isinstance(spec.vector, str):
                name, ivs, sites = spec.vector, *self._named(spec, pos, where)
            elif isinstance(spec.vector, list):
                name, ivs, sites = "inline", *self._inline(spec, pos, where)
            else:
                raise FieldError(f"{where}.vector", "must be a registered vector's name or a list of floats, "
                                 f"got {type(spec.vector).__name__}")
            if spec.units != "raw" and not isinstance(spec.vector, str):
                raise FieldError(f"{where}.units", "calibrated units need a registered calibrated vector (by name); "
                                 "an inline vector or an SAE feature has no calibration")
            entry = {"vector": name, "scale": spec.scale, "layers": [self._layer_index(s) for s in sites],
                     "positions": str(pos), **({"units": spec.units} if spec.units != "raw" else {})}
            if spec.sae is not None:
                entry.update(sae=spec.sae, feature=spec.feature, clamp=spec.clamp)
            if spec.heads is not None:
                entry["heads"] = [{"layer": h.layer, "head": h.head} for h in spec.heads]
            if spec.when is not None:
                rule, entry["when"] = self._condition(spec.when, f"{where}.when", name=where)
                ivs = {key: intervention.when(rule) for key, intervention in ivs.items()}
            for key, intervention in ivs.items():
                out.setdefault(key, []).append(intervention)
            echo.append(entry)
            entries.append((pos, spec.when is not None))
        return out or None, echo, entries

    def _check_positions(self, pos: Positions, param: str, limit: int) -> None:
        """Refuse an index that is never reached (``limit`` positions exist), also inside a span
        selector's combinations, and a span marker's token id outside the vocabulary (as a prompt's)."""
        todo: list[object] = [pos]
        while todo:
            node = todo.pop()
            if isinstance(node, Positions):
                top = node.max_index
                if top is not None and top >= limit:
                    raise FieldError(param, f"position {top} is never reached: prompt + max_tokens is "
                                     f"{limit} tokens (valid: 0..{limit - 1})")
                todo.append(node.span)
            elif isinstance(node, Marker):
                try:
                    self.model.prompts.check_ids(list(node.ids))
                except (ValueError, TypeError) as exc:
                    raise FieldError(param, f"marker {node}: {exc}") from None
            elif isinstance(node, tuple):
                todo.extend(node)
            elif dataclasses.is_dataclass(node):
                todo.extend(getattr(node, f.name) for f in dataclasses.fields(node))

    def _named(self, spec: SteeringSpec, pos: Positions, where: str) -> tuple[dict, list[str]]:
        vec = self._vector(spec.vector, f"{where}.vector")
        if spec.layers is None:
            sites = list(vec.sites)
        else:
            sites = [self._site(layer, f"{where}.layers").path for layer in spec.layers]
            for layer, site in zip(spec.layers, sites):
                self._has(spec.vector, vec, layer, site, f"{where}.layers")
        if spec.units == "calibrated":
            try:
                vec = calibrated_vector(vec, sites=tuple(sites))
            except ValueError as exc:
                raise FieldError(f"{where}.units", f"vector {spec.vector!r}: {exc}") from None
        try:
            return vec.select(sites).to_interventions(scale=spec.scale, positions=pos), sites
        except ValueError as exc:
            raise FieldError(f"{where}.positions", str(exc)) from None

    def _sae(self, spec: SteeringSpec, pos: Positions, where: str) -> tuple[dict, list[str]]:
        """An SAE feature added (``scale``) or clamped (``clamp``) at the SAE's own site."""
        if spec.sae is None or spec.feature is None:
            raise FieldError(f"{where}.sae", "SAE steering needs both sae (a registered SAE's name) and feature")
        if spec.vector is not None or spec.layers is not None:
            raise FieldError(f"{where}.vector", "give vector or sae, not both (an SAE steers at its own site: no layers)")
        sae = self.saes.get(spec.sae)
        if sae is None:
            known = ", ".join(self.saes) or "none (start the server with --sae NAME=DIR)"
            raise FieldError(f"{where}.sae", f"unknown SAE {spec.sae!r}; registered: {known}", code="unknown_sae")
        try:
            ivs = sae.add(spec.feature, spec.scale, positions=pos) if spec.clamp is None else \
                sae.clamp(spec.feature, spec.clamp, positions=pos)
        except ValueError as exc:
            raise FieldError(f"{where}.feature", str(exc)) from None
        site = self.model.resolve(sae.site)
        return {site.key: ivs[sae.site]}, [site.path]

    def _heads(self, spec: SteeringSpec, pos: Positions, where: str) -> tuple[dict, list[str]]:
        """Head steering: each ``{layer, head, vector}`` in its head's slice (``add_to_heads``)."""
        if spec.vector is not None or spec.layers is not None or spec.sae is not None or spec.units != "raw":
            raise FieldError(f"{where}.heads", "give heads alone (each names its layer), not with vector, layers, "
                             "sae or calibrated units")
        n = self.model.num_layers
        chosen: dict[int, dict[int, np.ndarray]] = {}
        for j, h in enumerate(spec.heads or []):
            at = f"{where}.heads[{j}]"
            if not -n <= h.layer < n:
                raise FieldError(f"{at}.layer", f"layer {h.layer} out of range for a {n}-layer model; valid: {-n}..{n - 1}")
            try:
                H, d = head_shape(self.model, h.layer)
            except ValueError as exc:
                raise FieldError(f"{at}.layer", str(exc)) from None
            if not -H <= h.head < H:
                raise FieldError(f"{at}.head", f"head {h.head} out of range ({H} heads at layer {h.layer}); "
                                 f"valid: {-H}..{H - 1}")
            if len(h.vector) != d:
                raise FieldError(f"{at}.vector", f"a head's vector has {len(h.vector)} values; this model's heads are "
                                 f"d_head = {d} wide")
            layer, head = h.layer % n, h.head % H
            if head in chosen.setdefault(layer, {}):
                raise FieldError(f"{at}.head", f"head {h.head} of layer {h.layer} is given twice")
            chosen[layer][head] = np.array(h.vector, dtype=np.float64)
        try:
            return add_to_heads(self.model, chosen, scale=spec.scale, positions=pos), \
                [self.model.layer_paths[i] for i in chosen]
        except ValueError as exc:
            raise FieldError(f"{where}.heads", str(exc)) from None

    def _inline(self, spec: SteeringSpec, pos: Positions, where: str) -> tuple[dict, list[str]]:
        values = spec.vector
        D = self.model.hidden_size
        if len(values) > MAX_INLINE:
            raise FieldError(f"{where}.vector", f"an inline vector holds at most {MAX_INLINE} values, got {len(values)}")
        if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in values):
            raise FieldError(f"{where}.vector", "an inline vector must be a list of numbers")
        arr = np.array(values, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > np.finfo(np.float32).max):
            raise FieldError(f"{where}.vector", "an inline vector must hold finite float32 values (no NaN or inf)")
        if arr.shape != (D,):
            raise FieldError(f"{where}.vector", f"an inline vector has {arr.size} values; this model's hidden size is {D}")
        if spec.layers is None:
            raise FieldError(f"{where}.layers", "an inline vector needs layers, e.g. [7]")
        sites = [self._site(layer, f"{where}.layers") for layer in spec.layers]
        try:
            return {s.key: iv.add_vector(arr.astype(np.float32), scale=spec.scale, positions=pos) for s in sites}, \
                [s.path for s in sites]
        except ValueError as exc:
            raise FieldError(f"{where}.vector", str(exc)) from None

    def _condition(self, spec: ConditionSpec, where: str, *, name: str) -> tuple[Any, dict[str, Any]]:
        """The condition of one steering entry, named for the entry (``steering[0]``), and its echo."""
        vec = self._vector(spec.vector, f"{where}.vector")
        path = vec.sites[0] if spec.layer is None else self._site(spec.layer, f"{where}.layer").path
        self._has(spec.vector, vec, spec.layer, path, f"{where}.layer")
        site = path if vec.hook_point == "output" else f"{path}:{vec.hook_point}"
        try:
            rule = iv.condition(vec.directions[path], site=site, threshold=spec.threshold, compare=spec.compare,
                                read=spec.read, measure=spec.measure, name=name)
        except ValueError as exc:
            raise FieldError(f"{where}.vector", str(exc)) from None
        return rule, {"vector": spec.vector, "layer": self._layer_index(path), "threshold": spec.threshold,
                      "compare": spec.compare, "read": spec.read, "measure": spec.measure}

    def _monitors(self, specs: list[str | MonitorSpec]) -> tuple[dict[str, Monitor] | None, list[dict]]:
        monitors: dict[str, Monitor] = {}
        echo = []
        for j, raw in enumerate(specs):
            spec = MonitorSpec(vector=raw) if isinstance(raw, str) else raw
            where = f"monitor[{j}]"
            vec = self._vector(spec.vector, f"{where}.vector" if isinstance(raw, MonitorSpec) else where)
            path = vec.sites[0] if spec.layer is None else self._site(spec.layer, f"{where}.layer").path
            self._has(spec.vector, vec, spec.layer, path, f"{where}.layer")
            direction = vec.directions[path]
            if direction.ndim != 1 or not np.any(direction):
                raise FieldError(where, f"vector {spec.vector!r} at {path} is not a non-zero (D,) direction")
            if spec.vector in monitors:
                raise FieldError(where, f"vector {spec.vector!r} is monitored twice")
            site = path if vec.hook_point == "output" else f"{path}:{vec.hook_point}"
            monitors[spec.vector] = Monitor(site, direction, before_interventions=spec.before_steering)
            echo.append({"vector": spec.vector, "layer": self._layer_index(path), "before_steering": spec.before_steering})
        return monitors or None, echo

    def _vector(self, name: str, param: str) -> Any:
        if name not in self.vectors:
            known = ", ".join(self.vectors) or "none (start the server with --vector NAME=FILE or --vectors-dir)"
            raise FieldError(param, f"unknown vector {name!r}; registered: {known}", code="unknown_vector")
        return self.vectors[name]

    def _has(self, name: str, vec: Any, layer: int | str | None, path: str, param: str) -> None:
        """Refuse a layer the named vector has no direction at, naming it and the vector's layers."""
        if path not in vec.directions:
            asked = f"layer {layer} ({path})" if isinstance(layer, int) else path
            have = ", ".join(str(self._layer_index(s)) for s in vec.sites)
            raise FieldError(param, f"vector {name!r} has no direction at {asked}; its layers: {have}")

    def _site(self, layer: int | str, param: str) -> Any:
        """A decoder layer by index (``7``, ``-1``) or a site string (``layers.7``, ``model.layers.7:input``)."""
        try:
            if isinstance(layer, int):
                n = self.model.num_layers
                if not -n <= layer < n:
                    raise ValueError(f"layer {layer} out of range for a {n}-layer model; valid: {-n}..{n - 1}")
                return self.model.resolve(f"layers.{layer}")
            return self.model.resolve(layer)
        except (ValueError, KeyError) as exc:
            raise FieldError(param, exc.args[0] if exc.args else str(exc)) from None

    def _layer_index(self, path: str) -> int | str:
        index = self.vectors.layer_of(path)
        return path if index is None else index


def parse_positions(spec: object, param: str) -> Positions:
    """A JSON position selector: ``"all" | "last" | "prompt" | "generated"``, an index, a list of
    indices, ``{"first_generated": n}``, ``{"start": a, "stop": b}``, or a span selector
    (``"reasoning" | "answer" | "special"``, ``{"between": [open, close]}``, ``{"not": ...}`` ...:
    :mod:`mlx_steer.engine.span_json`)."""
    try:
        if isinstance(spec, dict):
            if set(spec) == {"first_generated"} and _int(spec["first_generated"]):
                return Positions.first_generated(spec["first_generated"])
            if set(spec) == {"start", "stop"} and _int(spec["start"]) and _int(spec["stop"]):
                return Positions.window(spec["start"], spec["stop"])
            if set(spec) & {"first_generated", "start", "stop"}:
                raise ValueError('a positions object is {"first_generated": n} or {"start": a, "stop": b} with ints')
            return as_positions(spec)
        if isinstance(spec, str) or _int(spec) or (isinstance(spec, list) and spec and all(_int(x) for x in spec)):
            return as_positions(spec)
        raise ValueError(f'positions must be "all", "last", "prompt", "generated", an index, a non-empty list of '
                         f'indices, {{"first_generated": n}}, {{"start": a, "stop": b}} or a span selector '
                         f'({SPAN_FORMS}); got {spec!r}')
    except ValueError as exc:
        raise FieldError(param, str(exc)) from None


SPAN_FORMS = ('"reasoning", "answer", "special", {"between": [open, close], "from_token": n}, {"after": marker}, '
              '{"before": marker}, {"outside": [open, close]}, {"not": s}, {"and": [s, ...]}, {"or": [s, ...]}')


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
