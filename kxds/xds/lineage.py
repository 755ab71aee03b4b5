"""Which resource mappings were derived from which, and the names that may differ between them.

A stream compares what a gateway holds with what it should hold on every request and snapshot.
At 10,000 Ingresses a mapping has tens of thousands of names and a change touches a handful, so
every mapping a stream receives (a snapshot stepped from the one before) or derives (the part a
gateway subscribed to, routes held back until their clusters are in place) is recorded here with
its parent and the names changed between them. Two mappings with a recorded common ancestor are
then compared on the names changed along either path only; unrelated ones are compared in full.
Names that resources ask for or need (scopes naming route configurations, routes naming clusters)
are counted the same way, by a `Tally` that follows one role's mapping as it moves on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from kxds.xds.patched import patched
from kxds.xds.snapshot import Resource, entry_digest, fold, folded_version

Resources = Mapping[str, Resource]


class Lineage:
    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        # id(child) → (child, parent, names that may differ); the entries keep both alive, so an id
        # cannot be reused while it is recorded.
        self._parents: dict[int, tuple[Resources, Resources, frozenset[str]]] = {}
        # id(mapping) → (mapping, the XOR of its resources' digests: its version, see snapshot.py).
        self._folds: dict[int, tuple[Resources, int]] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    def derive(self, parent: Resources, changes: Mapping[str, Resource | None]) -> Resources:
        """`parent` with these names set to these resources (None: removed), recorded."""
        child = patched(parent, changes)
        self.record(child, parent, changes)
        return child

    def record(self, child: Resources, parent: Resources, names: Iterable[str]) -> None:
        if child is parent:
            return
        self._parents[id(child)] = (child, parent, frozenset(names))
        while len(self._parents) > self._capacity:
            del self._parents[next(iter(self._parents))]  # the oldest: its descendants compare in full

    def between(self, a: Resources, b: Resources) -> frozenset[str] | None:
        """Every name whose resource may differ between `a` and `b`; None if they are unrelated.

        Derivations form a tree. Both sides walk up one step at a time, and the first mapping one
        side reaches that the other has passed is their nearest common ancestor: the names
        changed on the ways to it are the fewest, and the walk costs the distance, not the capacity."""
        if a is b:
            return frozenset()
        # Each side: the mappings it passed (itself first), the names each step up changed, and
        # the index of each passed mapping by id.
        sides: tuple[tuple[list[Resources], list[frozenset[str]], dict[int, int]], ...] = (([a], [], {id(a): 0}), ([b], [], {id(b): 0}))
        active = [True, True]
        for _ in range(self._capacity):
            for side in (0, 1):
                if not active[side]:
                    continue
                passed, steps, index = sides[side]
                entry = self._parents.get(id(passed[-1]))
                if entry is None or entry[0] is not passed[-1]:
                    active[side] = False
                    continue
                parent = entry[1]
                passed.append(parent)
                steps.append(entry[2])
                index.setdefault(id(parent), len(steps))
                other_passed, other_steps, other_index = sides[1 - side]
                met = other_index.get(id(parent))
                if met is not None and other_passed[met] is parent:
                    return frozenset().union(*steps, *other_steps[:met])
            if not (active[0] or active[1]):
                break
        return None

    def differing(self, resources: Resources, held: Resources) -> list[str]:
        """Names in `resources` that `held` lacks or holds at another version, in name order."""
        names = self.between(resources, held)
        if names is None:
            return sorted(n for n, r in resources.items() if n not in held or held[n].version != r.version)
        return sorted(n for n in names if n in resources and (n not in held or held[n].version != resources[n].version))

    def missing(self, resources: Resources, held: Resources) -> list[str]:
        """Names `held` has and `resources` lacks, in name order."""
        names = self.between(resources, held)
        if names is None:
            return sorted(n for n in held if n not in resources)
        return sorted(n for n in names if n in held and n not in resources)

    def known_version(self, resources: Resources, folded: int) -> None:
        """`resources` (a snapshot's own mapping) has this folded version."""
        self._remember_fold(resources, folded)

    def version(self, resources: Resources) -> str:
        """The set version of `resources` (as `set_version`), from a recorded ancestor's when known."""
        return folded_version(self._fold(resources, self._capacity))

    def _fold(self, resources: Resources, depth: int) -> int:
        known = self._folds.get(id(resources))
        if known is not None and known[0] is resources:
            return known[1]
        entry = self._parents.get(id(resources))
        if depth and entry is not None and entry[0] is resources:
            parent, changed = entry[1], entry[2]
            folded = self._fold(parent, depth - 1)
            for name in changed:
                for side in (parent.get(name), resources.get(name)):
                    if side is not None:
                        folded ^= entry_digest(name, side.version)
        else:
            folded = fold(resources)
        self._remember_fold(resources, folded)
        return folded

    def _remember_fold(self, resources: Resources, folded: int) -> None:
        self._folds[id(resources)] = (resources, folded)
        while len(self._folds) > self._capacity:
            del self._folds[next(iter(self._folds))]

    def follow(self, tally: Tally, resources: Resources) -> frozenset[str] | None:
        """Move `tally` on to count `resources`; returns the names whose count changed (None: it
        was counted afresh, as `resources` is unrelated to what it counted before)."""
        before = tally.resources
        if before is resources:
            return frozenset()
        changed = self.between(resources, before) if before is not None else None
        tally.resources = resources
        if changed is None:
            tally.counts = Counter(n for r in resources.values() for t, n in getattr(r, tally.relation) if t == tally.type_url)
            return None
        assert before is not None
        counts, moved = tally.counts, set()
        for name in changed:
            for side, step in ((before.get(name), -1), (resources.get(name), 1)):
                for t, n in getattr(side, tally.relation) if side is not None else ():
                    if t == tally.type_url:
                        moved.add(n)
                        counts[n] += step
                        if not counts[n]:
                            del counts[n]
        return frozenset(moved)


class Tally:
    """How many resources of one mapping name each name of a type, by one relation ("asks" or
    "needs"): kept for one role (say, the route configurations a gateway applied) as the mapping
    in that role moves on, by `Lineage.follow`, instead of being recounted for every mapping."""

    __slots__ = ("relation", "type_url", "resources", "counts")

    def __init__(self, relation: str, type_url: str) -> None:
        self.relation, self.type_url = relation, type_url
        self.resources: Resources | None = None
        self.counts: Counter[str] = Counter()

    def __contains__(self, name: object) -> bool:
        return name in self.counts
