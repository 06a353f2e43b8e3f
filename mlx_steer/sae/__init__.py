"""Sparse autoencoders: load one in SAELens's layout (:func:`load_sae`), encode and decode a site's
activations, read a prompt's top features, and steer by a feature's decoder direction
(:meth:`SparseAutoencoder.feature_vector`); numpy, so the same for both backends. Train a TopK one
on MLX with :func:`train_topk_sae` (``mlx-steer sae train``)."""

from .autoencoder import ARCHITECTURES, SparseAutoencoder
from .files import load_sae, save_sae
from .hook_names import hook_name_of, site_of_hook
from .training import TrainingReport, record_tokens, train_topk_sae

__all__ = ["ARCHITECTURES", "SparseAutoencoder", "TrainingReport", "hook_name_of", "load_sae", "record_tokens",
           "save_sae", "site_of_hook", "train_topk_sae"]

