"""Sparse autoencoders on disk in SAELens's layout: a folder with ``cfg.json`` and
``sae_weights.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, and ``threshold`` for JumpReLU);
read from a local folder or, online, from a hub repo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .autoencoder import ARCHITECTURES, SparseAutoencoder
from .hook_names import hook_name_of, site_of_hook

__all__ = ["load_sae", "save_sae"]

CONFIG, WEIGHTS = "cfg.json", "sae_weights.safetensors"


def _folder(path_or_repo: str | os.PathLike, subfolder: str | None) -> Path:
    path = Path(path_or_repo)
    if path.is_dir():
        return path / subfolder if subfolder else path
    if path.exists():
        raise ValueError(f"{path} is a file; give the SAE's folder (with {CONFIG} and {WEIGHTS})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{path_or_repo!r} is not a folder, and huggingface_hub is not installed to fetch it") from None
    patterns = [f"{subfolder}/*" if subfolder else "*"]
    try:
        got = snapshot_download(str(path_or_repo), allow_patterns=patterns, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ValueError(f"SAE {path_or_repo!r} is not a local folder nor in the hub cache, and HF_HUB_OFFLINE is "
                             "set: download it once online, or give its folder") from None
        try:
            got = snapshot_download(str(path_or_repo), allow_patterns=patterns, etag_timeout=10)
        except Exception as exc:
            raise ValueError(f"SAE {path_or_repo!r} is not a local folder and could not be downloaded from the hub "
                             f"({type(exc).__name__}: {exc}); give its folder") from None
    return Path(got) / subfolder if subfolder else Path(got)


def load_sae(path_or_repo: str | os.PathLike, *, subfolder: str | None = None, site: str | None = None,
             model: Any = None) -> SparseAutoencoder:
    """Read an SAE in SAELens's layout.

    Args:
        path_or_repo: Its folder, or a hub repo id (online, or already in the hub cache).
        subfolder: The SAE's folder inside the repo (a release holding several).
        site: The mlx_steer site it reads; default: from its ``hook_name`` (``blocks.12.hook_resid_post``
            is ``layers.12``).
        model: When given, the site is resolved on it and the SAE's width checked against the site's.

    Raises:
        ValueError: missing files, an architecture or hook without a counterpart, shapes that disagree,
            or a width that does not fit the model's site (each named).
    """
    from safetensors.numpy import load_file

    folder = _folder(path_or_repo, subfolder)
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not an SAE folder in SAELens's layout: {', '.join(missing)} missing")
    cfg = json.loads((folder / CONFIG).read_text())
    meta = cfg.get("metadata") or cfg.get("meta") or {}  # SAELens 6: "metadata" ("meta" in its first releases)
    hook = cfg.get("hook_name") or meta.get("hook_name")
    arch = cfg.get("architecture") or {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}.get(
        cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu")
    if arch not in ARCHITECTURES:
        raise ValueError(f"SAE architecture {arch!r} in {folder / CONFIG} is not supported; supported: "
                         f"{', '.join(ARCHITECTURES)}")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    weights = load_file(str(folder / WEIGHTS))
    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    absent = [n for n in need if n not in weights]
    if absent:
        raise ValueError(f"{folder / WEIGHTS} lacks {', '.join(absent)}")
    where = site or cfg.get("mlx_steer_site") or site_of_hook(str(hook or ""))
    f32 = {n: weights[n].astype(np.float32) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    sae = SparseAutoencoder(
        f32["W_enc"], f32["b_enc"], f32["W_dec"], f32["b_dec"], architecture=arch,
        k=None if k is None else int(k), threshold=weights["threshold"].astype(np.float32) if arch == "jumprelu" else None,
        site=where, hook_name=hook, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        metadata={key: v for key, v in cfg.items() if key not in _WRITTEN})
    if cfg.get("d_in") not in (None, sae.d_in) or cfg.get("d_sae") not in (None, sae.d_sae):
        raise ValueError(f"{folder / CONFIG} says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but the weights are "
                         f"{sae.d_in} x {sae.d_sae}")
    if model is not None:
        check_fits(sae, model)
    return sae


def check_fits(sae: SparseAutoencoder, model: Any) -> None:
    """ValueError naming the site and both widths when the SAE does not read ``model``'s site."""
    s = model.resolve(sae.site)
    dim = model.backend.site_dim(s.path, s.point)
    if dim is not None and dim != sae.d_in:
        raise ValueError(f"the SAE reads width {sae.d_in} but site {s.key!r} of this model has width {dim}")


_WRITTEN = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
            "reshape_activations", "meta", "metadata", "hook_name", "k", "activation_fn_str", "activation_fn",
            "activation_fn_kwargs", "mlx_steer_site", "sae_lens_version"}


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike, *, model_name: str | None = None) -> Path:
    """Write ``sae`` in SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``); returns the folder."""
    from safetensors.numpy import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: np.ascontiguousarray(getattr(sae, n), dtype=np.float32) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.threshold is not None:
        tensors["threshold"] = np.ascontiguousarray(sae.threshold, dtype=np.float32)
    save_file(tensors, str(out / WEIGHTS))
    hook = sae.hook_name or hook_name_of(sae.site)
    layer = int(hook.split(".")[1]) if hook and hook.startswith("blocks.") else None
    # SAELens 6 reads the config's own fields and the metadata (an SAEMetadata: only its fields), "metadata"
    # since 6.x, "meta" in the first 6.x releases; the rest it skips. Without a sae_lens_version of 6 or
    # later it would convert the file as one written before 6.0
    cfg = {**(sae.metadata or {}), "sae_lens_version": "6.0.0", "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": sae.apply_b_dec_to_input,
           "normalize_activations": "none", "reshape_activations": "none", "hook_name": hook,
           "metadata": {"hook_name": hook, "model_name": model_name, "hook_layer": layer},
           "meta": {"hook_name": hook, "model_name": model_name, "hook_layer": layer}, "mlx_steer_site": sae.site}
    if sae.k is not None:
        cfg["k"] = sae.k
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out
