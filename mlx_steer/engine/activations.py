"""A read-only mapping of recorded activations that accepts short and resolved site keys."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Callable


class Activations(Mapping):
    """Recorded arrays keyed by canonical site key (``model.layers.4``, ``model.layers.4:input``).

    ``acts["layers.4"]`` and ``acts["model.layers.4"]`` return the same array; so does
    ``acts["layers.-1"]`` for the last layer.
    """

    def __init__(self, getters: Mapping[str, Callable[[], Any]], resolve: Callable[[str], str]):
        self._getters = dict(getters)
        self._resolve = resolve

    def _key(self, key: str) -> str:
        if key in self._getters:
            return key
        resolved = self._resolve(key)
        if resolved not in self._getters:
            raise KeyError(f"site {key!r} ({resolved}) was not recorded; recorded: {', '.join(self._getters)}")
        return resolved

    def __getitem__(self, key: str) -> Any:
        return self._getters[self._key(key)]()

    def __contains__(self, key: object) -> bool:
        try:
            self._key(key)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._getters)

    def __len__(self) -> int:
        return len(self._getters)

    def __repr__(self) -> str:
        return f"Activations({', '.join(self._getters)})"
