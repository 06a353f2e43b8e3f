"""Find where a behaviour lives: activation patching and attribution patching over sites × positions,
as a table (:class:`PatchTable`) and a heatmap. See docs/patching.md.

    from mlx_steer.patching import patch
    table = patch(model, "The Eiffel Tower is in the city of", "The Colosseum is in the city of",
                  target=" Paris", foil=" Rome", sites="resid")
    print(table.to_text()); table.heatmap("activation", "patching.png")
"""

from .patch import activation_patching, attribution_patching, patch
from .sites import COMPONENTS, PatchSite, patch_sites
from .table import METHODS, PatchRow, PatchTable

__all__ = ["COMPONENTS", "METHODS", "PatchRow", "PatchSite", "PatchTable", "activation_patching",
           "attribution_patching", "patch", "patch_sites"]
