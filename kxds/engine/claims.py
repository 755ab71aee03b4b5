"""Which Ingress owns each host, kept as Ingresses come, go and change their hosts.

The older Ingress wins a host (then the smaller name); an Ingress that loses any host to an
earlier winner claims none of them, which can free a host for a later one. So a change ripples
only along Ingresses sharing hosts, in precedence order, and is re-decided here in proportion to
them, exactly as a full translation decides it from scratch.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from kxds.engine.index import Index
from kxds.model.ingress import Ingress
from kxds.translate.gateway import claimed_hosts, precedence


class Claims:
    def __init__(self) -> None:
        self._hosts: dict[str, frozenset[str]] = {}  # Ingress → the hosts it claims
        self._contenders = Index()  # host → Ingresses claiming it
        self._winners: set[str] = set()  # Ingresses that own their hosts

    def add(self, ingress: Ingress, *, won: bool) -> None:
        """Index an Ingress as a full translation decided it."""
        self._claim(ingress.key, claimed_hosts(ingress))
        if won:
            self._winners.add(ingress.key)

    def wins(self, key: str) -> bool:
        return key in self._winners

    def reclaim(self, changed: set[str], ingresses: Mapping[str, Ingress]) -> set[str]:
        """These Ingresses were created, changed or deleted (`ingresses` is every current one):
        re-decide ownership around them. Returns every Ingress whose claim may have moved."""
        reached: set[str] = set()
        for key in changed:
            now = ingresses.get(key)
            hosts = claimed_hosts(now) if now is not None else frozenset()
            before = self._hosts.get(key, frozenset())
            self._unclaim(key, before - hosts)
            self._claim(key, hosts - before)
            reached |= before | hosts
            if now is None:
                self._winners.discard(key)
        queue = [(precedence(ingresses[other]), other) for host in reached for other in self._contenders.get(host)]
        heapq.heapify(queue)
        flipped = set(changed)
        done: set[str] = set()
        # In precedence order: whether an Ingress wins depends only on the winners before it.
        while queue:
            rank, key = heapq.heappop(queue)
            if key in done:
                continue
            done.add(key)
            hosts = self._hosts.get(key, frozenset())
            wins = not any(other != key and other in self._winners and precedence(ingresses[other]) < rank
                           for host in hosts for other in self._contenders.get(host))
            if wins == (key in self._winners) and key not in changed:
                continue
            flipped.add(key)
            (self._winners.add if wins else self._winners.discard)(key)
            for host in hosts:
                for other in self._contenders.get(host):
                    other_rank = precedence(ingresses[other])
                    if other_rank > rank:
                        heapq.heappush(queue, (other_rank, other))
        return flipped

    def _claim(self, key: str, hosts: frozenset[str]) -> None:
        for host in hosts:
            self._contenders.add(host, key)
        if hosts:
            held = self._hosts.get(key)
            self._hosts[key] = hosts if held is None else held | hosts

    def _unclaim(self, key: str, hosts: frozenset[str]) -> None:
        for host in hosts:
            self._contenders.discard(host, key)
        left = self._hosts.get(key, frozenset()) - hosts
        if left:
            self._hosts[key] = left
        else:
            self._hosts.pop(key, None)
