"""``mlx_steer.load``: one loader for both backends (the CLI and the server load through it too).

    model = mlx_steer.load("mlx-community/Llama-3.2-1B-Instruct-4bit")          # MLX (mlx-lm)
    model = mlx_steer.load("./hf-folder", backend="torch", device="cuda")        # HF transformers
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

BACKENDS = ("mlx", "torch")


def load(path_or_hf_repo: str | Path, *, backend: str = "mlx", device: str | None = None, **kwargs: Any) -> Any:
    """Load a model folder or hub id as a steerable model of ``backend``.

    Args:
        path_or_hf_repo: A local folder, or a Hugging Face repo id (mlx-lm or transformers format).
        backend: ``"mlx"`` (mlx-lm, the default) or ``"torch"`` (Hugging Face transformers).
        device: torch backend only: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ``"mps"`` ...
        kwargs: The backend loader's own options: for MLX ``lazy``, ``distributed`` and ``mlx_lm.load``'s
            options (see :func:`mlx_steer.backends.mlx.load`); for torch ``dtype`` and
            ``from_pretrained``'s options (see :func:`mlx_steer.torch_backend.load`).

    Returns:
        The MLX backend's :class:`~mlx_steer.backends.mlx.SteerableModel` or the torch backend's
        :class:`~mlx_steer.torch_backend.TorchSteerableModel`.

    Raises:
        ValueError: an unknown backend, a device the backend or machine does not have, or weights that
            cannot be read (the message names the model).
        FileNotFoundError: a local-looking path (``./x``, ``/x``, ``~/x``, ``a/b/c``) that does not exist;
            it is not looked up on the hub.
        ImportError: the torch backend without torch and transformers installed.
    """
    check_device(backend, device)
    spec = str(path_or_hf_repo)
    local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if local and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"no such file: {spec}")
    path = str(Path(spec).expanduser()) if spec.startswith("~") else spec
    from safetensors import SafetensorError

    try:
        if backend == "torch":
            from .backends.torch import load as torch_load

            return torch_load(path, device=device, **kwargs)
        from .backends.mlx import load as mlx_load

        return mlx_load(path, **kwargs)
    except (RuntimeError, SafetensorError, ValueError, OSError) as exc:  # truncated weights, bad JSON ...
        raise ValueError(f"cannot load the model {spec}: {exc}") from exc


def check_device(backend: str, device: str | None, *, option: str = "device") -> None:
    """``device`` fits ``backend``: none for MLX, a torch device this build and machine have for torch.

    Args:
        option: How the messages name the setting (the CLI passes ``"--device"``).

    Raises:
        ValueError: an unknown backend, a device given to MLX, or a device torch cannot use here.
        ImportError: the torch backend without torch and transformers.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "mlx":
        if device is not None:
            raise ValueError(f"{option} {device} applies to the torch backend; MLX picks its device itself")
        return
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise ImportError("the torch backend needs torch and transformers: pip install torch transformers")
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{option} {device!r} is not a torch device ({exc}); e.g. cpu, cuda, cuda:1, mps") from None
    if dev.type == "meta":
        raise ValueError(f"{option} meta holds no weights; use cpu, cuda or mps")
    module = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    available = getattr(module, "is_available", None)
    if available is not None and not available():
        raise ValueError(f"{option} {device}: no {dev.type} device is available to this torch "
                         f"({torch.__version__}); use {option} cpu")
    count = getattr(module, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ValueError(f"{option} {device}: this machine has {count()} {dev.type} device(s); "
                         f"valid: {', '.join(f'{dev.type}:{i}' for i in range(count()))}")
