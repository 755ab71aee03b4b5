"""The Kourier algorithm, for the benchmark's baseline column only (`kxds serve --kourier-algorithm`).

Kourier rebuilds everything on every change, inlines endpoints into STATIC clusters (no EDS) and
stamps one fresh version on every resource, so each change re-sends all listeners, routes and
clusters (knative-ingress-contract.md §10.11). kxds reproduces that here so the bench measures
both on the same machine, Envoy and inputs.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from kxds.translate.encoded import encode
from kxds.translate.gateway import GatewayConfig
from kxds.xds.snapshot import Resource, Snapshot
from kxds.resources import CLUSTER, ENDPOINT, refs


def inline_endpoints(config: GatewayConfig) -> GatewayConfig:
    """EDS clusters become STATIC clusters carrying their load assignment; no EDS resources."""
    assignments = {e.name: e for e in config.encoded.get(ENDPOINT, ())}
    clusters = []
    for encoded in config.encoded.get(CLUSTER, ()):
        if encoded.name in assignments:
            cluster = cluster_pb2.Cluster.FromString(encoded.data)
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment.FromString(assignments[encoded.name].data))
            encoded = encode(encoded.name, cluster)
        clusters.append(encoded)
    needs = {name: refs(n for n in wanted if n[0] != ENDPOINT) for name, wanted in config.cluster_needs.items()}
    return replace(config, encoded={**config.encoded, CLUSTER: tuple(clusters), ENDPOINT: ()}, cluster_needs=needs, asks={**config.asks, CLUSTER: needs})


def fresh_versions(snapshot: Snapshot) -> Snapshot:
    """Every resource at a new random version: the gateway is sent everything again."""
    stamp = uuid.uuid4().hex[:8]
    resources = {
        type_url: MappingProxyType({n: Resource(name=n, version=f"{r.version}-{stamp}", type_url=r.type_url, data=r.data, needs=r.needs, asks=r.asks) for n, r in of_type.items()})
        for type_url, of_type in snapshot.resources.items()
    }
    return Snapshot(serial=snapshot.serial, resources=MappingProxyType(resources))
