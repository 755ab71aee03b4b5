"""Which Ingress a gateway rejected: found among what changed, never guessed from the message.

A gateway that NACKs an update rejects something that changed since what it last applied. Envoy's
message often cannot say what: it names nothing ("Invalid duration: …"), or it quotes a route
configuration dump cut at a few kilobytes, naming whichever virtual hosts come first. So the
suspects are the Ingresses whose current translation the rejecting gateway had not applied yet,
and the culprit is found by asking Envoy: with one suspect, it is the culprit and is held out
(`EnvoyRejected`) until it, or a Service or Secret it uses, changes or it is deleted. With more,
half of them are held back for one round while the next snapshot tests the other half: a NACK
narrows the search to that half; an ACK clears it and brings the held-back half in, where a NACK
searches it the same way. Innocent Ingresses are only ever held back for these rounds (a few
gateway round trips), never held out. A rejection never loops: a culprit is not retried until
something it depends on changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kxds.model.ingress import Ingress
from kxds.model.objects import ObjectKey
from kxds import resources as type_urls

ENVOY_REJECTED = "EnvoyRejected"
VERIFYING = "Uninitialized"
VERIFYING_MESSAGE = "Held back for a moment while kxds finds which change a gateway rejected"


@dataclass(frozen=True, slots=True)
class Rejection:
    hash: str  # the Ingress spec that was rejected
    uses: frozenset[tuple[str, str]]  # (kind, "ns/name") of the Services and Secrets it uses
    message: str  # the rejected resources and Envoy's error


def _uses(ingress: Ingress) -> frozenset[tuple[str, str]]:
    return frozenset({*(("Service", s) for s in ingress.services), *(("Secret", s) for s in ingress.secrets)})


def implicated(ingresses: Iterable[Ingress], type_url: str, resource_names: Sequence[str]) -> list[Ingress]:
    """Of Ingresses that changed, those that can have changed resources of the rejected type: a
    cluster or its endpoints come from the Services an Ingress routes to (cluster = "ns/service"),
    a secret from its TLS entries, listeners only from TLS (HTTPS listeners); any route
    configuration or scope may carry any Ingress's routes."""
    names = frozenset(resource_names)
    match type_url:
        case type_urls.CLUSTER | type_urls.ENDPOINT:
            return [i for i in ingresses if i.services & names]
        case type_urls.SECRET:
            return [i for i in ingresses if i.secrets & names]
        case type_urls.LISTENER:
            return [i for i in ingresses if i.tls]
    return list(ingresses)


def _summary(message: str, resource_names: Sequence[str], limit: int = 5) -> str:
    names = sorted(resource_names)
    shown = f"{', '.join(names[:limit])}{' …' if len(names) > limit else ''}: " if names else ""
    return f"{shown}{message.strip()}"


class Quarantine:
    def __init__(self) -> None:
        self._held: dict[str, Rejection] = {}
        # Suspects held back while the snapshot that tests the others waits for Envoy's verdict.
        self._deferred: set[str] = set()
        # The culprit found last, until a snapshot without it is accepted.
        self._confirming: str | None = None

    def on_rejected(self, suspects: Sequence[Ingress], message: str, resource_names: Sequence[str] = ()) -> list[Ingress]:
        """A gateway rejected an update in which `suspects` changed: hold out the culprit if that
        settles it (returned), else hold back half of them for one round. Returns the culprits."""
        suspects = sorted((i for i in suspects if i.key not in self._held and i.key not in self._deferred), key=lambda i: i.key)
        if not suspects:
            # Nothing unverified is left, yet the update was rejected again: the last culprit did
            # not explain it (the cause is not an Ingress). Let it back in and stop searching.
            if self._confirming is not None:
                self._held.pop(self._confirming, None)
            self._confirming = None
            self._deferred.clear()
            return []
        if len(suspects) == 1:
            culprit = suspects[0]
            self._held[culprit.key] = Rejection(culprit.hash, _uses(culprit), _summary(message, resource_names))
            self._confirming = culprit.key
            return [culprit]
        self._deferred.update(i.key for i in suspects[len(suspects) // 2:])
        return []

    def verdict_pending(self) -> bool:
        """Does the next snapshot test something: the suspects not held back, or that leaving the
        last culprit out is what makes the update acceptable?"""
        return bool(self._deferred) or self._confirming is not None

    def accepted(self) -> bool:
        """The testing snapshot was applied: the culprit is confirmed, and the held-back suspects
        come in. True if any were held back."""
        released, self._deferred, self._confirming = bool(self._deferred), set(), None
        return released

    @property
    def holding(self) -> bool:
        return bool(self._held) or bool(self._deferred)

    def held(self, ingress: Ingress) -> Rejection | None:
        rejection = self._held.get(ingress.key)
        return rejection if rejection is not None and rejection.hash == ingress.hash else None

    def split(self, ingresses: tuple[Ingress, ...]) -> tuple[tuple[Ingress, ...], list[tuple[Ingress, Rejection]], list[Ingress]]:
        """The Ingresses to translate, those held out with their rejection, and those held back."""
        if not self.holding:
            return ingresses, [], []  # the usual case: no walk on the rebuild path
        kept, held, deferred = [], [], []
        for ingress in ingresses:
            rejection = self.held(ingress)
            if rejection is not None:
                held.append((ingress, rejection))
            elif ingress.key in self._deferred:
                deferred.append(ingress)
            else:
                kept.append(ingress)
        return tuple(kept), held, deferred

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
