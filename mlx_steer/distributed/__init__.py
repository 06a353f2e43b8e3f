"""Several processes: data-parallel extraction over ``mx.distributed`` or ``torch.distributed``.

See docs/distributed.md. Nothing here starts a process or opens a socket at import.
"""

from .group import Group, LocalGroup, MLXGroup, TorchGroup, launched_group
from .moments import ContrastMoments
from .partition import split_by_length

__all__ = ["ContrastMoments", "Group", "LocalGroup", "MLXGroup", "TorchGroup", "launched_group", "split_by_length"]
