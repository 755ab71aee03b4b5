"""Each Ingress's readiness: the snapshot that first carried its current translation, and whether
every connected gateway has applied a snapshot at least that new."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kxds.model.ingress import Ingress, RejectedIngress
from kxds.translate.gateway import RECONCILE_FAILED, Outcome
from kxds.xds.fleet import Fleet

NO_GATEWAY = "NoGatewayConnected"
UNINITIALIZED = "Uninitialized"


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressStatus:
    namespace: str
    name: str
    ready: bool
    reason: str
    message: str
    hash: str
    hosts: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "ready": self.ready,
            "reason": self.reason,
            "message": self.message,
            "hash": self.hash,
            "hosts": list(self.hosts),
        }


@dataclass(frozen=True, slots=True)
class Served:
    """An Ingress as of the snapshot that first carried its current translation."""

    hash: str
    outcome: Outcome
    since_serial: int


@dataclass(frozen=True, slots=True)
class Moved:
    """What `track` reports: an Ingress whose translation is new, with why it is not served if not."""

    key: str
    outcome: Outcome
    rejected: bool  # its document does not parse (the error is the outcome's message)


class Readiness:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self.served: dict[str, Served] = {}

    def track(self, ingresses: Iterable[tuple[Ingress | RejectedIngress, Outcome]], serial: int, *, complete: bool) -> list[Moved]:
        """Record what snapshot `serial` carries for these Ingresses (`complete`: for every
        Ingress, the others are gone). Returns those whose translation moved."""
        moved: list[Moved] = []
        served = {} if complete else self.served
        for ingress, outcome in ingresses:
            before = self.served.get(ingress.key)
            if before is not None and before.hash == ingress.hash and before.outcome == outcome:
                served[ingress.key] = before
                continue
            served[ingress.key] = Served(ingress.hash, outcome, serial)
            moved.append(Moved(ingress.key, outcome, isinstance(ingress, RejectedIngress)))
        self.served = served
        return moved

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.served.pop(key, None)

    def changed_between(self, after: int, upto: int) -> set[str]:
        """Ingresses served cleanly whose current translation first came in a snapshot in (after, upto]."""
        return {key for key, s in self.served.items() if s.outcome.programmed and after < s.since_serial <= upto}

    def acked_gateway_ips(self, key: str) -> set[str]:
        """Addresses of this replica's gateways that applied the Ingress's current translation."""
        served = self.served.get(key)
        if served is None:
            return set()
        return {g.peer_ip for g in self._fleet.gateways.values() if g.stream.synced_serial >= served.since_serial}

    def status(self, obj: Ingress | RejectedIngress) -> IngressStatus:
        hosts = tuple(sorted(obj.hosts)) if isinstance(obj, Ingress) else ()
        ready, reason, message = self._readiness(self.served.get(obj.key), obj.hash)
        return IngressStatus(namespace=obj.namespace, name=obj.name, ready=ready, reason=reason, message=message, hash=obj.hash, hosts=hosts)

    def _readiness(self, served: Served | None, current_hash: str) -> tuple[bool, str, str]:
        if served is None or served.hash != current_hash:
            return False, UNINITIALIZED, "Waiting for the configuration to be built"
        if not served.outcome.programmed or served.outcome.reason:
            return False, served.outcome.reason, served.outcome.message
        if not self._fleet.gateways:
            return False, NO_GATEWAY, "No Envoy gateway is connected to kxds"
        if not self._fleet.synced(served.since_serial):
            return False, UNINITIALIZED, "Waiting for load balancer to be ready"
        return True, "", ""


def rejected_outcome(bad: RejectedIngress) -> Outcome:
    return Outcome(programmed=False, reason=RECONCILE_FAILED, message=str(bad.error))

