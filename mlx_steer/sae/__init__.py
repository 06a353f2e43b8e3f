"""Sparse autoencoders: load one in SAELens's layout (:func:`load_sae`), encode and decode a site's
activations, read a prompt's top features, and steer by a feature's decoder direction
(:meth:`SparseAutoencoder.feature_vector`). numpy, so the same for both backends."""

from .autoencoder import ARCHITECTURES, SparseAutoencoder
from .files import load_sae, save_sae
from .hook_names import hook_name_of, site_of_hook

__all__ = ["ARCHITECTURES", "SparseAutoencoder", "hook_name_of", "load_sae", "save_sae", "site_of_hook"]
