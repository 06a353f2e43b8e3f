"""Backends: each a folder implementing :mod:`mlx_steer.engine.protocols`'s protocols (no imports between them)."""
