"""The names a gateway subscribed to for one type, changed in place, with the recent changes logged.

A delta gateway subscribes a few names at a time to a set of tens of thousands (a route
configuration per Knative Service in the scoped layout). Rebuilding a frozen set on each change
would cost O(N) per new Knative Service; this set changes in place instead, and numbers and logs
each change (boundedly), so that what was worked out at an earlier number can catch up on the
names changed since rather than compare the whole set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Set


class Subscribed(Set[str]):
    __slots__ = ("_names", "serial", "_log")

    def __init__(self, capacity: int = 64) -> None:
        self._names: set[str] = set()
        self.serial = 0  # moves on with every change
        self._log: deque[tuple[int, frozenset[str]]] = deque(maxlen=capacity)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def view(self) -> Set[str]:
        """The names as a built-in set, for C-speed set operations; not to be changed."""
        return self._names

    def update(self, subscribe: Iterable[str], unsubscribe: Iterable[str]) -> None:
        """Delta xDS: `subscribe` added, then `unsubscribe` removed."""
        removed = {n for n in unsubscribe if n in self._names}
        added = {n for n in subscribe if n not in self._names} - set(unsubscribe)
        self._names -= removed
        self._names |= added
        self._logged(added | removed)

    def replace(self, names: frozenset[str]) -> None:
        """State of the world: every request names the whole subscription."""
        if names != self._names:
            changed = self._names ^ names
            self._names = set(names)
            self._logged(changed)

    def since(self, serial: int) -> frozenset[str] | None:
        """The names that may have changed since `serial`; None if that is too long ago to say."""
        if serial == self.serial:
            return frozenset()
        if serial > self.serial or not self._log or self._log[0][0] > serial + 1:
            return None
        changed: set[str] = set()
        for logged, names in reversed(self._log):
            if logged <= serial:
                break
            changed |= names
        return frozenset(changed)

    def _logged(self, changed: set[str]) -> None:
        if changed:
            self.serial += 1
            self._log.append((self.serial, frozenset(changed)))
