"""Adapters that let other tools drive mlx_steer models (each imports its tool only inside its own package)."""
