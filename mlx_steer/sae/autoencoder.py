"""A sparse autoencoder over one site's activations, as numpy: ``encode`` (ReLU, TopK or JumpReLU, as
SAELens computes them), ``decode``, the reconstruction error, the top features of each token, and a
feature's decoder direction as a steering vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .kept_tokens import MAX_NORM_RATIO, kept_tokens

__all__ = ["ARCHITECTURES", "SparseAutoencoder"]

ARCHITECTURES = ("standard", "topk", "jumprelu")


@dataclass(frozen=True)
class SparseAutoencoder:
    """``f = act(x' @ W_enc + b_enc)`` with ``x' = x - b_dec`` when ``apply_b_dec_to_input``, and
    ``x_hat = f @ W_dec + b_dec``.

    Attributes:
        W_enc: (d_in, d_sae). b_enc: (d_sae,). W_dec: (d_sae, d_in). b_dec: (d_in,).
        architecture: ``"standard"`` (ReLU), ``"topk"`` (the ``k`` largest pre-activations, then ReLU)
            or ``"jumprelu"`` (ReLU where the pre-activation exceeds ``threshold``).
        k: TopK's k. threshold: JumpReLU's (d_sae,) thresholds.
        site: The mlx_steer site it reads (``layers.12``).
        hook_name: The SAELens hook name, kept for the file.
        apply_b_dec_to_input: Subtract ``b_dec`` before encoding.
        metadata: Other config entries, kept for the file.
    """

    W_enc: np.ndarray
    b_enc: np.ndarray
    W_dec: np.ndarray
    b_dec: np.ndarray
    architecture: str = "standard"
    k: int | None = None
    threshold: np.ndarray | None = None
    site: str = ""
    hook_name: str | None = None
    apply_b_dec_to_input: bool = True
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        d_in, d_sae = self.W_enc.shape if self.W_enc.ndim == 2 else (None, None)
        shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        for name, want in shapes.items():
            got = getattr(self, name).shape
            if d_in is None or got != want:
                raise ValueError(f"SAE {name} has shape {got}; with W_enc (d_in, d_sae) = {self.W_enc.shape} it "
                                 f"must be {want}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.architecture == "topk" and not (isinstance(self.k, int) and 0 < self.k <= int(d_sae)):
            raise ValueError(f"a topk SAE needs k in 1..{d_sae}, got {self.k!r}")
        if self.architecture == "jumprelu" and (self.threshold is None or self.threshold.shape != (d_sae,)):
            raise ValueError(f"a jumprelu SAE needs a ({d_sae},) threshold")

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def pre_activations(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"activations have width {x.shape[-1]}; this SAE reads width {self.d_in} at {self.site}")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Feature activations (..., d_sae) of activations (..., d_in), float32."""
        pre = self.pre_activations(x)
        if self.architecture == "standard":
            return np.maximum(pre, 0.0)
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return np.where(pre > self.threshold, np.maximum(pre, 0.0), 0.0).astype(np.float32)
        assert self.k is not None
        idx = np.argpartition(pre, -self.k, axis=-1)[..., -self.k:]
        out = np.zeros_like(pre)
        np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, axis=-1), 0.0), axis=-1)
        return out

    def decode(self, f: np.ndarray) -> np.ndarray:
        """Reconstructed activations (..., d_in) of features (..., d_sae)."""
        return np.asarray(f, dtype=np.float32) @ self.W_dec + self.b_dec

    def reconstruction(self, x: np.ndarray, *, skip_first: bool = True,
                       max_norm_ratio: float | None = MAX_NORM_RATIO) -> dict[str, Any]:
        """How well it reconstructs the activations ``x``: (L, d_in) one sequence's tokens, or (..., L, d_in)
        several of the same length, first token first.

        Leaves out the tokens training leaves out (:func:`~mlx_steer.sae.kept_tokens.kept_tokens`): each
        sequence's first token (the attention sink) unless ``skip_first=False``, and tokens whose norm is
        over ``max_norm_ratio`` times the median (None keeps them).

        Returns:
            ``mse`` (mean squared error per element), ``explained_variance`` (1 - MSE / variance around the
            mean), ``l0`` (mean number of active features), ``tokens`` (how many were measured) and
            ``skipped`` (the positions left out: indices into L for (L, d_in), else index tuples into x's
            leading axes).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"activations have shape {x.shape}; this SAE reads width {self.d_in} at {self.site}")
        lead = x.shape[:-2] if x.ndim > 1 else ()
        seqs = x.reshape(-1, *x.shape[-2:]) if x.ndim > 1 else x[None, None]
        kept, skipped = kept_tokens(list(seqs), skip_first=skip_first, max_norm_ratio=max_norm_ratio)
        if not len(kept):
            raise ValueError(f"no tokens to measure in activations of shape {x.shape}")
        f = self.encode(kept)
        err = kept - self.decode(f).astype(np.float64)
        var = ((kept - kept.mean(0)) ** 2).sum(-1).mean()
        mse = (err**2).sum(-1).mean()
        where: list[Any] = [p if not lead else (*(int(i) for i in np.unravel_index(s, lead)), p) for s, p in skipped]
        return {"mse": float(mse / self.d_in), "explained_variance": float(1.0 - mse / var) if var > 0 else 0.0,
                "l0": float((f > 0).sum(-1).mean()), "tokens": len(kept), "skipped": where}

    def top_features(self, x: np.ndarray, k: int = 5) -> list[list[tuple[int, float]]]:
        """Per row of ``x`` (L, d_in): its ``k`` most active features ``(index, activation)``, largest first."""
        f = self.encode(np.atleast_2d(x))
        order = np.argsort(-f, axis=-1)[:, :k]
        return [[(int(i), float(row[i])) for i in idx if row[i] > 0] for row, idx in zip(f, order)]

    def feature_vector(self, model: Any, feature: int) -> Any:
        """Feature ``feature``'s decoder row as a SteeringVector at this SAE's site of ``model`` (add it
        with a scale to steer by the feature)."""
        from ..vectors.steering_vector import SteeringVector

        j = self.check_feature(feature)
        site = model.resolve(self.site)
        return SteeringVector({site.path: self.W_dec[j].astype(np.float32)}, hook_point=site.point,
                              method=f"sae_feature_{j}", model_id=model.model_id)

    def check_feature(self, feature: object) -> int:
        """``feature`` as an index of this SAE (ValueError naming the valid range)."""
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= int(feature) < self.d_sae:
            raise ValueError(f"feature {feature!r} out of range for {self.d_sae} features; valid: 0..{self.d_sae - 1}")
        return int(feature)

    def clamp(self, feature: int, value: float, *, positions: object = "all") -> dict[str, Any]:
        """Interventions that set ``feature`` to ``value`` at this SAE's site (encode, set, decode, with the
        SAE's reconstruction error added back, so nothing else of the activation changes): for
        ``run/generate(interventions=...)``, per row with ``for_rows``, gated with ``when``.
        ``value=0`` switches the feature off where it fires."""
        from ..engine import interventions as iv

        j = self.check_feature(feature)
        v = float(value)
        if not np.isfinite(v):
            raise ValueError(f"clamp value must be finite, got {value!r}")
        spec = iv.FeatureClamp(
            positions=iv.as_positions(positions), encoder=np.ascontiguousarray(self.W_enc[:, j]),
            bias=float(self.b_enc[j]), decoder=np.ascontiguousarray(self.W_dec[j]), value=v,
            input_shift=self.b_dec if self.apply_b_dec_to_input else None,
            threshold=None if self.threshold is None else float(self.threshold[j]),
            topk=None if self.architecture != "topk" else (self.W_enc, self.b_enc, int(self.k or 0)))
        return {self.site: spec}

    def add(self, feature: int, scale: float, *, positions: object = "all") -> dict[str, Any]:
        """Interventions adding ``scale`` times ``feature``'s decoder row at this SAE's site."""
        from ..engine import interventions as iv

        return {self.site: iv.add_vector(self.W_dec[self.check_feature(feature)], scale=scale, positions=positions)}
