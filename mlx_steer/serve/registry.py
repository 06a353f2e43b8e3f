"""The vectors a server offers by name: from ``--vector NAME=FILE`` and ``--vectors-dir DIR``.

Every file is read and checked against the model when the server starts, so a request can only
name a registered vector (never a file path) and a vector that does not fit fails at startup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..vectors.steering_vector import SteeringVector
from ..vectors.vector_file import load_vector

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SUFFIXES = (".safetensors", ".gguf")


class VectorRegistry(Mapping[str, SteeringVector]):
    """Named steering vectors, each fitted to one model (sites are the model's paths).

    Args:
        model: The served model.
        vectors: ``{name: SteeringVector}`` (checked against the model).
    """

    def __init__(self, model: Any, vectors: Mapping[str, SteeringVector] | None = None):
        self.model = model
        self._vectors: dict[str, SteeringVector] = {}
        self._files: dict[str, str] = {}
        for name, vec in (vectors or {}).items():
            self.add(name, vec)

    def add(self, name: str, vec: SteeringVector, *, file: str | None = None) -> None:
        """Register ``vec`` as ``name``.

        Raises:
            ValueError: a bad or duplicate name, or a vector that does not fit the model.
        """
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"vector name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                             "(starting with a letter or digit)")
        if name in self._vectors:
            raise ValueError(f"vector name {name!r} is given twice ({self._files.get(name) or 'in code'} "
                             f"and {file or 'in code'})")
        if vec.hidden_size != self.model.hidden_size:
            raise ValueError(f"vector {name!r} has hidden size {vec.hidden_size}; the model's is {self.model.hidden_size}")
        for site in vec.sites:
            self.model.resolve(site if vec.hook_point == "output" else f"{site}:{vec.hook_point}")
        self._vectors[name] = vec
        if file is not None:
            self._files[name] = file

    def add_file(self, name: str, path: str | Path) -> None:
        """Read a vector file (safetensors or GGUF), checked against the model."""
        self.add(name, load_vector(path, model=self.model), file=Path(path).name)

    def add_dir(self, folder: str | Path) -> list[str]:
        """Register every ``*.safetensors`` / ``*.gguf`` file in ``folder`` by its stem.

        Raises:
            FileNotFoundError: no such folder.
            ValueError: not a folder, or a file that does not fit.
        """
        folder = Path(folder)
        if not folder.exists():
            raise FileNotFoundError(f"no such folder: {folder}")
        if not folder.is_dir():
            raise ValueError(f"--vectors-dir {folder} is not a folder")
        names = []
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.is_file():
                self.add_file(path.stem, path)
                names.append(path.stem)
        return names

    def layer_of(self, site: str) -> int | None:
        """The decoder-layer index of a resolved site path (None for a sub-module)."""
        paths = list(self.model.layer_paths)
        return paths.index(site) if site in paths else None

    def describe(self, name: str) -> dict[str, Any]:
        """What ``GET /v1/vectors`` shows for one vector."""
        vec = self._vectors[name]
        norms = vec.norms()
        return {
            "id": name, "object": "vector", "file": self._files.get(name),
            "sites": [{"path": s, "layer": self.layer_of(s), "norm": round(norms[s], 6),
                       "shape": list(vec.directions[s].shape)} for s in vec.sites],
            "layers": [layer for s in vec.sites if (layer := self.layer_of(s)) is not None],
            "hidden_size": vec.hidden_size, "hook_point": vec.hook_point, "method": vec.method,
            "model_id": vec.model_id, "read_positions": vec.read_positions, "dtype": vec.dtype,
            "created_by": vec.created_by, "metadata": dict(vec.extra),
            "calibration": vec.calibration.to_dict() if vec.calibration is not None else None,
        }

    def __getitem__(self, name: str) -> SteeringVector:
        return self._vectors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)
