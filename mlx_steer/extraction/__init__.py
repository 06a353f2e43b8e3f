"""Extracting steering directions from contrast prompts: :func:`extract` (either backend), the
method table, the activation reader and dataset recording (the data-parallel form lives in
:mod:`mlx_steer.distributed`)."""

from .directions import READS, extract
from .method_table import METHODS

__all__ = ["METHODS", "READS", "extract"]
