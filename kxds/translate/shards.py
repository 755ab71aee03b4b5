"""A cold translation in shares: another process translates some of the Ingresses, and what it
would cache comes back as plain data to seed this process's translation cache.

Seeded entries are keyed by inputs built from this process's own objects, so the full translation
that follows finds them exactly as it finds its own: an entry whose inputs differ (a cluster whose
Service another Ingress merges differently) is simply translated again. Plain tuples, because they
pickle an order of magnitude faster than the frozen dataclasses they are made from. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kxds.model.ingress import Ingress
from kxds.model.world import World
from kxds.resources import Encoded, Refs
from kxds.settings import GatewaySettings
from kxds.translate.gateway import (
    Backend,
    PROGRAMMED,
    IngressResult,
    Plan,
    TranslationCache,
    assignment_inputs,
    cluster_entry,
    cluster_inputs,
    shared_set,
)

EncodedData = tuple[str, bytes, str]  # name, bytes, version
ScopeData = tuple[EncodedData, tuple[tuple[str, str], ...]]  # the scope and what it asks for
# A backend: cluster, Service key, index of the port in the Service's ports, HTTP/2, upstream TLS.
BackendData = tuple[str, str, int, bool, bool]
# key, its backends, clusters its routes name, external and internal vhosts (Kourier's layout), its
# own route configurations and scopes (the scoped layout).
IngressData = tuple[str, tuple[BackendData, ...], tuple[str, ...], tuple[EncodedData, ...], tuple[EncodedData, ...], tuple[EncodedData, ...],
                    tuple[ScopeData, ...]]


@dataclass(frozen=True, slots=True)
class ShareData:
    """A share's translations as plain data: each Ingress's, in the order translated, and each
    cluster (with its load assignment) as the first of those Ingresses naming it needs it."""

    ingresses: tuple[IngressData, ...]
    clusters: tuple[tuple[str, EncodedData, EncodedData | None], ...]


def warm(world: World, gateway: GatewaySettings, ingresses: Iterable[Ingress], cache: TranslationCache) -> list[str]:
    """Translate these Ingresses, and the clusters their backends give, into `cache` as a full
    translation of `world` would look them up. Returns the keys of those programmed, in order; an
    Ingress that fails is left to the full translation, which reports it."""
    plan = Plan(world, gateway, cache)
    ca = plan.upstream_ca[0] if plan.upstream_ca is not None else None
    programmed = []
    for ingress in ingresses:
        try:
            result = plan.translated(ingress)
        except Exception:  # noqa: S112 - the full translation meets it again and reports it on the Ingress
            continue
        if not result.outcome.programmed:
            continue
        programmed.append(ingress.key)
        for name, backend in result.backends.items():
            if name not in cache.clusters:
                built = cluster_entry(name, backend, ca, world.endpoint_slices.get(backend.service.key, ()), cache)
                cache.clusters[name] = built.cluster
                if built.assignment is not None:
                    cache.assignments[name] = built.assignment
    cache.ingresses.update(plan.ingress_cache)
    return programmed


def share(world: World, gateway: GatewaySettings, ingresses: Sequence[Ingress]) -> ShareData:
    """What `warm` caches for these Ingresses, as plain data (run by the process translating them)."""
    cache = TranslationCache()
    programmed = warm(world, gateway, ingresses, cache)
    results = [cache.ingresses[key][1] for key in programmed]
    return ShareData(
        ingresses=tuple(
            (key, _backend_data(r.backends), tuple(r.clusters), _plain(r.external), _plain(r.internal), _plain(r.tables),
             tuple((_data(s), tuple(asks)) for s, asks in r.scopes))
            for key, r in zip(programmed, results)
        ),
        clusters=tuple(
            (name, _data(entry[1]), _data(cache.assignments[name][1]) if name in cache.assignments else None)
            for name, entry in cache.clusters.items()
        ),
    )


def seed(cache: TranslationCache, world: World, gateway: GatewaySettings, ingresses: Sequence[Ingress], data: ShareData) -> int:
    """Put a share's translations into `cache`, keyed by inputs made of this process's objects.
    Only Ingresses of `ingresses` (the share handed out) are taken. Returns how many were seeded."""
    plan = Plan(world, gateway, cache)
    ca = plan.upstream_ca[0] if plan.upstream_ca is not None else None
    mine = {i.key: i for i in ingresses}
    backends: dict[str, Backend] = {}
    seeded = 0
    for key, backend_data, clusters, external, internal, tables, scoped in data.ingresses:
        ingress = mine.get(key)
        found = _backends(backend_data, world) if ingress is not None else None
        if ingress is None or found is None:
            continue  # not handed out, or its Services moved: the full translation decides
        asks: dict[Refs, Refs] = {}  # one per route configuration, as the translator shares them
        result = IngressResult(
            PROGRAMMED, found, external=_encoded(external), internal=_encoded(internal), clusters=shared_set(clusters, ingress.services),
            tables=_encoded(tables), scopes=tuple((Encoded(*s), asks.setdefault(a, a)) for s, a in scoped),
        )
        cache.ingresses[key] = (plan.inputs(ingress), result)
        seeded += 1
        for name, backend in found.items():
            backends.setdefault(name, backend)
    for name, cluster, assignment in data.clusters:
        first = backends.get(name)  # the backend the share built the cluster from
        if first is None:
            continue
        cache.clusters[name] = (cluster_inputs(first, ca), Encoded(*cluster))
        if assignment is not None:
            slices = world.endpoint_slices.get(first.service.key, ())
            cache.assignments[name] = (assignment_inputs(first, slices), Encoded(*assignment))
    return seeded


def _backend_data(backends: Mapping[str, Backend]) -> tuple[BackendData, ...]:
    return tuple((name, b.service.key, b.service.ports.index(b.port), b.http2, b.upstream_tls) for name, b in backends.items())


def _backends(data: tuple[BackendData, ...], world: World) -> dict[str, Backend] | None:
    """A share's backends made of this process's Services: what `backends_of` gives for the same
    Ingress and Services (the share translated this very world), without working it out again."""
    found = {}
    for name, service_key, port, http2, upstream_tls in data:
        service = world.services.get(service_key)
        if service is None or port >= len(service.ports):
            return None
        found[name] = Backend(service, service.ports[port], http2, upstream_tls)
    return found


def _data(e: Encoded) -> EncodedData:
    return (e.name, e.data, e.version)


def _plain(encoded: tuple[Encoded, ...]) -> tuple[EncodedData, ...]:
    return tuple((e.name, e.data, e.version) for e in encoded)


def _encoded(data: tuple[EncodedData, ...]) -> tuple[Encoded, ...]:
    return tuple(Encoded(*e) for e in data)
