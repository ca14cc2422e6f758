"""Name → implementation registries (generators, checkpoint formats, interpreters, models…).

A registry is filled by the ``register`` decorator when the module that defines
an implementation is imported. Implementations that live outside the importing
package (the toy bench, a lab's own package) are *plugins*: a registry created
with ``plugins="<entry point group>"`` imports every entry point of that group
the first time it is asked for its names, so a package registers readers or
backends by declaring them in its ``pyproject.toml``::

    [project.entry-points."labelfactory.real_datasets"]
    mylab = "mylab.labelfactory_readers"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of implementations, filled by the ``register`` decorator
    and, for a registry with a ``plugins`` group, by that group's entry points."""

    def __init__(self, kind: str, plugins: str | None = None):
        self.kind = kind
        self.plugins = plugins
        self._items: dict[str, T] = {}
        self._plugins_loaded = plugins is None

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for entry in entry_points(group=self.plugins):
                entry.load()

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(sorted(self._items))

    def names(self) -> tuple[str, ...]:
        """The names in the order they were registered (plugins' after the package's own),
        for registries whose order means something, e.g. the downstream settings' table order."""
        self._load_plugins()
        return tuple(self._items)
