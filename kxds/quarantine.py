"""Ingresses whose configuration a gateway rejected, held out until they or what they use change.

Envoy's NACK names what it refused ("Error adding/updating cluster(s) ns/svc: …", a vhost, a
domain); the Ingresses owning those names are left out of the next snapshot, so the rest of the
configuration is accepted again and keeps updating, and each held Ingress reports why. Nothing is
retried until the Ingress or a Service or Secret it uses changes: a rejection never loops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kxds.model.ingress import Ingress
from kxds.model.objects import ObjectKey

ENVOY_REJECTED = "EnvoyRejected"
MAX_SUSPECTS = 5


@dataclass(frozen=True, slots=True)
class Rejection:
    hash: str  # the Ingress spec that was rejected
    uses: frozenset[tuple[str, str]]  # (kind, "ns/name") of the Services and Secrets it uses
    message: str  # the rejected resources and Envoy's error


def _uses(ingress: Ingress) -> frozenset[tuple[str, str]]:
    return frozenset({*(("Service", s) for s in ingress.services), *(("Secret", s) for s in ingress.secrets)})


def _names(ingress: Ingress) -> set[str]:
    """What Envoy can call this Ingress's resources in an error: vhost and route names carry
    `(ns/name)`, clusters and SDS secrets are `ns/name`, domains are its hosts."""
    return {f"({ingress.key})", *ingress.services, *ingress.secrets, *ingress.hosts}


def _mentions(message: str, name: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", message) is not None


class Quarantine:
    def __init__(self) -> None:
        self._held: dict[str, Rejection] = {}

    def implicate(self, ingresses: Iterable[Ingress], message: str, resource_names: Iterable[str] = ()) -> list[Ingress]:
        """Hold every Ingress the rejection names (not already held); returns them.

        Some Envoy errors name nothing ("Invalid duration: …"): then the resources that were new or
        changed in the rejected response stand in for the message, if they are few enough to point
        at a culprit rather than at a whole burst of changes."""
        candidates = [i for i in ingresses if i.key not in self._held]
        found = [i for i in candidates if any(_mentions(message, n) for n in _names(i))]
        changed = set(resource_names)
        if not found and 0 < len(changed) <= MAX_SUSPECTS:
            found = [i for i in candidates if changed & _names(i)]
        names = sorted(changed)
        summary = f"{', '.join(names[:MAX_SUSPECTS])}{' …' if len(names) > MAX_SUSPECTS else ''}: {message.strip()}"
        for ingress in found:
            self._held[ingress.key] = Rejection(ingress.hash, _uses(ingress), summary)
        return found

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def held(self, ingress: Ingress) -> Rejection | None:
        rejection = self._held.get(ingress.key)
        return rejection if rejection is not None and rejection.hash == ingress.hash else None

    def split(self, ingresses: tuple[Ingress, ...]) -> tuple[tuple[Ingress, ...], list[tuple[Ingress, Rejection]]]:
        """The Ingresses to translate, and those held out with their rejection."""
        if not self._held:
            return ingresses, []  # the usual case: no walk on the rebuild path
        kept, held = [], []
        for ingress in ingresses:
            rejection = self.held(ingress)
            if rejection is None:
                kept.append(ingress)
            else:
                held.append((ingress, rejection))
        return tuple(kept), held

    def release(self, changed: Iterable[ObjectKey]) -> None:
        """Objects changed: give the Ingresses that depend on them another chance."""
        if not self._held:
            return
        for key in changed:
            if key.kind == "ConfigMap":
                self._held.clear()
                return
            name = f"{key.namespace}/{key.name}"
            if key.kind == "Ingress":
                self._held.pop(name, None)
            elif key.kind in ("Service", "Secret"):
                for ingress, rejection in list(self._held.items()):
                    if (key.kind, name) in rejection.uses:
                        del self._held[ingress]
