"""What a gateway's resources name, kept as they change: whether it has subscribed to everything
the parents it applied ask for, and which clusters the routes and listeners it holds need.

Both are questions about every resource of a type (20,000 route configurations, 40,000 scopes at
10,000 Ingresses) asked on every request and snapshot. Each answer is kept with the inputs it was
worked out from and moved on from the names that changed in any of them (`Lineage.follow`,
`Subscribed.since`); inputs too far apart to relate are worked out in full.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kxds.resources import CLUSTER
from kxds.xds.lineage import Lineage, Resources, Tally
from kxds.xds.subscription import Subscribed


@dataclass(slots=True)
class _Unasked:
    """For one (parent type, child type): the names the parent's applied resources ask for that
    the snapshot has and the gateway has not subscribed to, as of these inputs."""

    asks: Tally
    available: Resources | None = None
    names_serial: int = -1  # -1: never worked out
    unasked: set[str] = field(default_factory=set)


class Interest:
    def __init__(self, lineage: Lineage, needing: Iterable[tuple[str, str]]) -> None:
        self._lineage = lineage
        self._unasked: dict[tuple[str, str], _Unasked] = {}
        # (dependent type, role: "acked" or "pending") → the clusters that response's resources
        # need: one tally per pair in `needing`, kept from the first response on.
        self._needs: dict[tuple[str, str], Tally] = {pair: Tally("needs", CLUSTER) for pair in needing}

    def all_asked(self, parent_type: str, type_url: str, parent: Resources, available: Resources, names: Subscribed) -> bool:
        """Has the gateway subscribed to every resource of `available` that `parent` asks for?"""
        memo = self._unasked.get((parent_type, type_url))
        if memo is None:
            memo = self._unasked[(parent_type, type_url)] = _Unasked(Tally("asks", type_url))
        if memo.available is available and memo.names_serial == names.serial and memo.asks.resources is parent:
            return not memo.unasked
        moved = self._lineage.follow(memo.asks, parent)
        arrived = self._lineage.between(available, memo.available) if memo.available is not None else None
        subscribed = names.since(memo.names_serial) if memo.names_serial >= 0 else None
        asks = memo.asks
        if moved is None or arrived is None or subscribed is None:
            memo.unasked = {n for n in asks.counts if n in available and n not in names}
        else:
            for name in moved | arrived | subscribed:
                if name in asks and name in available and name not in names:
                    memo.unasked.add(name)
                else:
                    memo.unasked.discard(name)
        memo.available, memo.names_serial = available, names.serial
        return not memo.unasked

    def needed(self, dependent: str, role: str, resources: Resources) -> Tally:
        """The clusters `resources` (a response of a dependent type, in this role) need; the pair
        is one of those given as `needing`."""
        tally = self._needs[(dependent, role)]
        self._lineage.follow(tally, resources)
        return tally

    def asked_pairs(self) -> Iterable[tuple[str, str]]:
        """The (parent type, child type) pairs `all_asked` keeps an answer for."""
        return list(self._unasked)

    def needing_roles(self) -> Iterable[tuple[str, str]]:
        """The (dependent type, role) pairs `needed` keeps a tally for."""
        return list(self._needs)
