"""A translated configuration wrapped as a snapshot: content versions, prerequisites, what gateways ask for."""

from __future__ import annotations

from kxds.resources import CLUSTER, LISTENER, ROUTE, Refs, refs
from kxds.translate.gateway import GatewayConfig
from kxds.xds.snapshot import NONE, Resource, Snapshot


def build_snapshot(config: GatewayConfig, serial: int, previous: Snapshot | None = None) -> Snapshot:
    """Wrap the encoded resources; those unchanged since `previous` are reused as they are."""
    dynamic = {c.name for c in config.encoded.get(CLUSTER, ())}
    # An Ingress's route configurations (one per listener) name the same clusters: one set of needs
    # for all of them (60,000 sets at 10,000 Ingresses otherwise).
    shared: dict[frozenset[str], Refs] = {}
    route_needs = {name: shared[clusters] if clusters in shared else shared.setdefault(clusters, refs((CLUSTER, c) for c in clusters & dynamic))
                   for name, clusters in config.route_clusters.items()}
    listener_needs = {name: refs((CLUSTER, c) for c in clusters) for name, clusters in config.listener_clusters.items()}
    needs_of = {CLUSTER: config.cluster_needs, ROUTE: route_needs, LISTENER: listener_needs}
    by_type: dict[str, dict[str, Resource]] = {}
    for type_url, encoded in config.encoded.items():
        before = previous.of_type(type_url) if previous is not None else {}
        resources = by_type[type_url] = {}
        type_needs, type_asks = needs_of.get(type_url, {}), config.asks.get(type_url, {})
        for e in encoded:
            needs, asks = type_needs.get(e.name, NONE), type_asks.get(e.name, NONE)
            old = before.get(e.name)
            reuse = old is not None and old.version == e.version and old.needs == needs and old.asks == asks
            resources[e.name] = old if reuse and old is not None else Resource.wrapped(type_url, e, needs, asks)
    return Snapshot.of(serial, by_type, previous)
