"""A one-to-many index (a host → the Ingresses claiming it, a Service → the Ingresses naming it)
that stores a lone value as itself: at 10,000 Ingresses nearly every key has one, and a set per
key was 120,000 one-element sets, 26 MB of the resident set."""

from __future__ import annotations

from collections.abc import Collection, KeysView


class Index:
    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, str | set[str]] = {}

    def add(self, key: str, value: str) -> None:
        held = self._values.get(key)
        if held is None:
            self._values[key] = value
        elif isinstance(held, str):
            if held != value:
                self._values[key] = {held, value}
        else:
            held.add(value)

    def discard(self, key: str, value: str) -> None:
        held = self._values.get(key)
        if held is None:
            return
        if isinstance(held, str):
            if held == value:
                del self._values[key]
            return
        held.discard(value)
        if len(held) == 1:
            self._values[key] = next(iter(held))

    def get(self, key: str) -> Collection[str]:
        """The values of `key` (none if it has none); not to be kept across changes of the index."""
        held = self._values.get(key)
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else held

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def keys(self) -> KeysView[str]:
        return self._values.keys()
