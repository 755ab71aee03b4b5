"""Mappings derived from others by a few changes, made in O(changes) rather than copied.

Snapshots step from the one before by a handful of resources, and a stream derives several
mappings from each (the part a gateway asked for, routes held back until their clusters are in
place, clusters kept while routes name them). At 10,000 Ingresses a copy of each is tens of
thousands of entries made and freed for every change; a patched mapping shares its base instead,
and is written out as a dict of its own once its changes grow past a bound (so lookups stay one
level deep and a long-lived mapping does not keep a chain of old ones alive).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

V = TypeVar("V")

# A patched mapping with more changes than this is written out as a dict of its own.
MAX_PATCHES = 256


class Patched(Mapping[str, V]):
    """A base mapping with a few names set or removed."""

    __slots__ = ("_base", "_changes", "_length")

    def __init__(self, base: Mapping[str, V], changes: dict[str, V | None], length: int) -> None:
        self._base, self._changes, self._length = base, changes, length  # None: the name is gone

    def __getitem__(self, name: str) -> V:
        if name in self._changes:
            resource = self._changes[name]
            if resource is None:
                raise KeyError(name)
            return resource
        return self._base[name]

    def get(self, name: str, default: Any = None) -> Any:
        if name in self._changes:
            resource = self._changes[name]
            return default if resource is None else resource
        return self._base.get(name, default)

    def __contains__(self, name: object) -> bool:
        if name in self._changes:
            return self._changes[name] is not None
        return name in self._base

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[str]:
        changes = self._changes
        yield from (name for name in self._base if name not in changes)
        yield from (name for name, resource in changes.items() if resource is not None)

    def written_out(self) -> dict[str, V]:
        out = copied(self._base)
        for name, resource in self._changes.items():
            if resource is None:
                out.pop(name, None)
            else:
                out[name] = resource
        return out


def patched(parent: Mapping[str, V], changes: Mapping[str, V | None]) -> Mapping[str, V]:
    """`parent` with these names set to these values (None: removed)."""
    length = len(parent) + sum((resource is not None) - (name in parent) for name, resource in changes.items())
    if isinstance(parent, Patched):  # one level deep: the changes are merged, the base is shared
        result = Patched(parent._base, {**parent._changes, **changes}, length)
    else:
        result = Patched(parent, dict(changes), length)
    return result.written_out() if len(result._changes) > MAX_PATCHES else result


def copied(mapping: Mapping[str, V]) -> dict[str, V]:
    """A dict copy: a C copy for a dict or a mapping proxy (dict(proxy) goes item by item)."""
    if isinstance(mapping, Patched):
        return mapping.written_out()
    if isinstance(mapping, (dict, MappingProxyType)):
        return mapping.copy()
    return dict(mapping)
