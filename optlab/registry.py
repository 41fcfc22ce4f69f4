"""A tiny name -> builder registry shared by models, data sets, augmentations and compression.

The form, the CLI and the tests all enumerate the same registry, so adding a choice is adding
one decorated function, never editing an if-chain.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownChoice(ValueError):
    """A name that is not registered; the message lists what is."""


class Registry(Generic[T]):
    def __init__(self, kind: str, *, load: Callable[[], None] | None = None):
        """`load`, if given, imports the modules that register the entries; it runs the first
        time the registry is read, so that importing the registry itself stays cheap."""
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._load = load

    def _all(self) -> dict[str, T]:
        if self._load is not None:
            load, self._load = self._load, None   # entries registered while loading are kept
            try:
                load()
            except BaseException:
                self._load = load
                raise
        return self._entries

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return add

    def add(self, name: str, entry: T) -> T:
        return self.register(name)(entry)

    def get(self, name: str) -> T:
        try:
            return self._all()[name]
        except KeyError:
            raise UnknownChoice(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def items(self):
        return self._all().items()
