"""The provider's model args (``-M key=value`` on the Inspect command line), checked before the
model loads: a bad value is refused naming the arg and what is valid.

Inspect reads each value as YAML and splits unquoted commas into lists, so ``-M layers=6`` arrives
as ``6`` and ``-M layers=6,7`` as ``["6", "7"]``; both are taken here.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...serve.registry import NAME

BACKENDS = ("mlx", "torch")
KNOWN = ("backend", "device", "vector", "vectors", "scale", "layers", "positions", "sae", "feature", "clamp",
         "monitor", "max_batch", "max_tokens")


class OptionError(ValueError):
    """A model arg the provider cannot take (its message names the arg and what is valid)."""


@dataclass(frozen=True)
class ProviderOptions:
    """The checked model args.

    Attributes:
        backend: ``"mlx"`` or ``"torch"``.
        device: torch device (None: the backend's default).
        vectors: ``{name: file}`` registered for steering and monitoring by name.
        steering: The default steering entries (the server's ``steering`` field), [] for none.
        monitor: The vectors monitored by default (names).
        sae: The SAE folder registered as ``"sae"`` (None: none).
        max_batch: Sequences decoded together in the continuous batch.
        max_tokens: ``max_tokens`` when the generate config gives none.
    """

    backend: str = "mlx"
    device: str | None = None
    vectors: tuple[tuple[str, Path], ...] = ()
    steering: tuple[dict[str, Any], ...] = ()
    monitor: tuple[str, ...] = ()
    sae: Path | None = None
    max_batch: int = 32
    max_tokens: int = 256


def parse_options(args: dict[str, Any]) -> ProviderOptions:
    """Check Inspect's model args (``-M``) and turn them into :class:`ProviderOptions`.

    Raises:
        OptionError: an unknown arg, a missing file, a value of the wrong kind.
    """
    unknown = sorted(set(args) - set(KNOWN))
    if unknown:
        raise OptionError(f"unknown model arg {unknown[0]!r} (-M {unknown[0]}=...); valid: {', '.join(KNOWN)}")
    backend = args.get("backend", "mlx")
    if backend not in BACKENDS:
        raise OptionError(f"-M backend={backend!r}: valid: {', '.join(BACKENDS)}")
    main = _vector_arg(args["vector"], "vector") if "vector" in args else None
    extra = [_vector_arg(x, "vectors") for x in _listed(args.get("vectors"))]
    vectors = ([main] if main else []) + extra
    names = [n for n, _ in vectors]
    if len(set(names)) != len(names):
        raise OptionError(f"-M vector/vectors: a name is given twice: {', '.join(names)}")
    sae = _sae_arg(args) if "sae" in args else None
    for arg in ("feature", "clamp"):
        if arg in args and sae is None:
            raise OptionError(f"-M {arg} needs -M sae=DIR (an SAE folder in SAELens's layout)")
    if main is not None and sae is not None:
        raise OptionError("-M vector and -M sae both steer: give one (per-sample steering can combine them)")
    steering: list[dict[str, Any]] = []
    common: dict[str, Any] = {"scale": _number(args.get("scale", 1.0), "scale")}
    if "positions" in args:
        common["positions"] = args["positions"]
    if main is not None:
        entry = {"vector": main[0], **common}
        if "layers" in args:
            entry["layers"] = _layers(args["layers"])
        steering.append(entry)
    elif sae is not None:
        if "layers" in args:
            raise OptionError("-M layers does not apply to an SAE feature: it steers at the SAE's own site")
        entry = {"sae": "sae", "feature": _count(args["feature"], "feature", low=0), **common}
        if "clamp" in args:
            entry["clamp"] = _number(args["clamp"], "clamp")
        steering.append(entry)
    else:
        for arg in ("scale", "layers", "positions"):
            if arg in args:
                raise OptionError(f"-M {arg} needs something to steer with: -M vector=FILE or -M sae=DIR -M feature=N")
    monitor = _monitor_arg(args, names, default=[main[0]] if main else [])
    return ProviderOptions(backend=backend, device=_device(args.get("device")), vectors=tuple(vectors),
                           steering=tuple(steering), monitor=tuple(monitor), sae=sae,
                           max_batch=_count(args.get("max_batch", 32), "max_batch", low=1),
                           max_tokens=_count(args.get("max_tokens", 256), "max_tokens", low=1))


def _listed(value: Any) -> list[Any]:
    """A list arg: a list, one value, or a comma-separated string (as given from Python or quoted)."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list) else [value]
    return [part for x in items for part in ([p.strip() for p in x.split(",")] if isinstance(x, str) else [x])]


def _vector_arg(value: Any, arg: str) -> tuple[str, Path]:
    """``FILE`` (named for its stem) or ``NAME=FILE``; the file must exist."""
    if not isinstance(value, str) or not value:
        raise OptionError(f"-M {arg}={value!r}: expected FILE or NAME=FILE (a .safetensors or .gguf vector file)")
    name, sep, file = value.partition("=")
    if not sep:
        name, file = Path(value).stem, value
    if not NAME.match(name):
        raise OptionError(f"-M {arg}={value!r}: the name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                          "(give NAME=FILE)")
    path = Path(file).expanduser()
    if not path.is_file():
        raise OptionError(f"-M {arg}={value!r}: no such file: {file}")
    return name, path


def _sae_arg(args: dict[str, Any]) -> Path:
    path = Path(str(args["sae"])).expanduser()
    if not path.is_dir():
        raise OptionError(f"-M sae={args['sae']!r}: no such folder (an SAE folder in SAELens's layout)")
    if "feature" not in args:
        raise OptionError("-M sae needs -M feature=N (the feature to add with -M scale, or to clamp with -M clamp)")
    return path


def _monitor_arg(args: dict[str, Any], names: list[str], *, default: list[str]) -> list[str]:
    if "monitor" not in args:
        return default
    asked = [str(x) for x in _listed(args["monitor"])]
    if asked in (["none"], ["false"], ["False"]):
        return []
    for name in asked:
        if name not in names:
            raise OptionError(f"-M monitor={name!r}: not a registered vector; registered: {', '.join(names) or 'none'}"
                              " (register one with -M vector=FILE or -M vectors=NAME=FILE)")
    return asked


def _layers(value: Any) -> list[int | str]:
    out: list[int | str] = []
    for x in _listed(value):
        if isinstance(x, bool) or not isinstance(x, (int, str)) or x == "":
            raise OptionError(f"-M layers={value!r}: expected layer indices or sites, e.g. 6 or 6,7 or layers.6")
        out.append(int(x) if isinstance(x, str) and x.lstrip("-").isdigit() else x)
    return out


def _number(value: Any, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"-M {arg}={value!r}: expected a number")
    return float(value)


def _count(value: Any, arg: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(f"-M {arg}={value!r}: expected an integer >= {low}")
    return value


def _device(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise OptionError(f"-M device={value!r}: expected a device name such as cpu, cuda or mps")
    return value
