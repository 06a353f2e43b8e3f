"""Backends: each a folder implementing :mod:`mlx_steer.backend`'s protocols (no imports between them)."""
