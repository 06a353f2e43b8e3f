"""A backend's map of its model's module tree (paths → modules, decoder layers, the path resolver),
kept equal to the tree: a model changed after loading (``nn.quantize`` replacing linears, a module
swapped by assignment) is mapped again before the next call uses the map.

The map remembers where each mapped module (and each list or dict holding modules) sits in its
parent: ``(container, key, value)`` with ``container[key] is value``. Checking that every slot still
holds its value is one identity test per slot — no tree walk — and runs whenever the map is read
(when a call plans, installs or exports; a generation step reads nothing of it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .paths import PathResolver

__all__ = ["MappedTree", "Slot", "slots_of"]

Slot = tuple[Any, Any, object]  # (container, key, value): container[key] is value while the tree is unchanged


class MappedTree:
    """Base of a backend: ``modules``, ``layer_paths`` and ``resolver`` as of the model's current tree.

    A backend implements :meth:`_map_tree` (read the tree: set ``_modules``, ``_layer_paths``,
    ``_resolver``, ``_slots`` and whatever it derives from them) and :meth:`_hooked` (whether a module
    has this library's hooks on it), and calls ``_map_tree()`` in its constructor.
    """

    _modules: dict[str, Any]
    _layer_paths: list[str]
    _resolver: PathResolver
    _slots: list[Slot]

    def _map_tree(self) -> None:
        raise NotImplementedError

    def _hooked(self, module: Any) -> bool:
        raise NotImplementedError

    def _check_tree(self) -> None:
        """Map the tree again if a mapped slot no longer holds its module.

        Raises:
            ValueError: modules that this library has hooks on were replaced (their hooks no longer
                act): remove the hooks first (``handle.remove()`` / ``model.remove_all_hooks()``).
        """
        for container, key, value in self._slots:
            if container[key] is not value:
                break
        else:
            return
        before = dict(self.__dict__)  # the map and what derives from it (each is replaced, not mutated)
        old = self._modules
        self._map_tree()
        gone = [p for p, m in old.items() if p and self._modules.get(p) is not m]
        hooked = [p for p in gone if self._hooked(old[p])]
        if hooked:  # keep the old map (and refuse every call) until those hooks are removed
            self.__dict__.update(before)
            raise ValueError(
                f"the model's module tree changed after loading (replaced: {_listed(gone)}) while mlx_steer "
                f"hooks are installed on {_listed(hooked)}; those hooks no longer act: remove them "
                "(handle.remove() or model.remove_all_hooks()) and install them again"
            )

    @property
    def modules(self) -> dict[str, Any]:
        """Every module by dotted path, as the tree is now."""
        self._check_tree()
        return self._modules

    @property
    def layer_paths(self) -> list[str]:
        self._check_tree()
        return self._layer_paths

    @layer_paths.setter
    def layer_paths(self, value: list[str]) -> None:
        self._layer_paths = value

    @property
    def resolver(self) -> PathResolver:
        self._check_tree()
        return self._resolver

    @resolver.setter
    def resolver(self, value: PathResolver) -> None:
        self._resolver = value


def _listed(paths: list[str], most: int = 4) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more


def slots_of(root: Any, *, is_module: Callable[[object], bool], children: Callable[[Any], Any]) -> list[Slot]:
    """Every slot under ``root`` holding a module or a list/tuple/dict of them (``children(module)``:
    the module's own mapping of names to children)."""
    out: list[Slot] = []
    stack: list[tuple[Any, Any, object]] = [(None, None, root)]
    while stack:
        container, key, value = stack.pop()
        if container is not None:
            out.append((container, key, value))
        if is_module(value):
            items: Any = children(value).items()
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        elif isinstance(value, dict):
            items = value.items()
        else:
            continue
        for k, v in items:
            if is_module(v) or (isinstance(v, (list, tuple, dict)) and _holds_modules(v, is_module)):
                stack.append((children(value) if is_module(value) else value, k, v))
    return out


def _holds_modules(value: object, is_module: Callable[[object], bool]) -> bool:
    items: Iterable[object] = value.values() if isinstance(value, dict) else \
        value if isinstance(value, (list, tuple)) else ()
    return any(is_module(v) or (isinstance(v, (list, tuple, dict)) and _holds_modules(v, is_module)) for v in items)
