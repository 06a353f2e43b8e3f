"""An mlxterp-compatible facade over :class:`~mlx_steer.SteerableModel`.

mlxterp code runs with only its import changed:

    from mlx_steer.compat.mlxterp import InterpretableModel, interventions as iv

    model = InterpretableModel("path/or/hf-id")
    with model.trace("This product is", interventions={"layers.8": iv.add_vector(v * 2.0)}) as trace:
        logits = model.output.save()
    trace.activations["model.model.layers.8"]       # (1, L, D), after the intervention

What maps onto what:

- ``trace(inputs, interventions=)`` runs one :meth:`SteerableModel.run` on entering the block (as
  mlxterp does) and records every decoder layer's output (plus each intervened site), keyed the
  mlxterp way: ``"model." + module path`` (``model.model.layers.3`` for mlx-lm models).
- Intervention keys are mlxterp's (``layers.3``, ``model.layers.3``, ``model.model.layers.3``,
  ``layers.3.self_attn``) or mlx_steer sites (``layers.3:input``).
- ``interventions`` (``add_vector``, ``scale``, ``zero_out``, ``replace_with``, ``clamp``,
  ``noise``, ``compose``) return callables, as in mlxterp, that carry their mlx_steer equivalent;
  a trace installs the equivalent, so ``iv.add_vector(v)`` steers exactly like
  ``mlx_steer.engine.interventions.add_vector(v)``. Plain callables become ``interventions.custom``;
  mlx_steer interventions are accepted as they are.
- ``generate(...)`` applies the interventions at every step through mlx-lm's cached generation
  loop (mlxterp recomputes the whole sequence per token; the results agree).

Differences from mlxterp, all deliberate: batches of texts are left-padded and masked (mlxterp
right-pads with token 0 unmasked), so ``[:, -1]`` is every row's last real token; only decoder
layers and intervened sites are recorded (mlxterp records every module); vectors are cast to the
activation dtype (a float32 vector does not upcast a bfloat16 stream); ``model.output`` outside a
trace raises instead of returning an empty proxy.

The package: ``intervention`` (mlxterp's interventions and composer), ``translation`` (mlxterp's
names, ``interventions=`` dicts and inputs as mlx_steer takes them), ``tracing`` (the trace and its
proxies), ``model`` (``InterpretableModel``).
"""

from .intervention import (
    Intervention, InterventionComposer, add_vector, clamp, compose, interventions, noise, replace_with, scale, zero_out,
)
from .model import GenerationResult, InterpretableModel
from .tracing import OutputProxy, Trace

__all__ = [
    "GenerationResult", "InterpretableModel", "Intervention", "InterventionComposer", "OutputProxy",
    "Trace", "add_vector", "clamp", "compose", "interventions", "noise", "replace_with", "scale", "zero_out",
]
