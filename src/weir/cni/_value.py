"""Small immutable value classes for the plugin's start-up path.

``dataclasses`` (with ``inspect``, ``ast`` and ``dis`` behind it) costs the plugin about 5 ms
of imports on every CNI call; these few classes need only equality, a repr and immutability.
Subclasses list their fields in ``__slots__`` and set them in a typed ``__init__`` with ``_set``.
"""

from __future__ import annotations


class Value:
    __slots__: tuple[str, ...] = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Value) and type(self) is type(other) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
