"""Test-only faults, switched on by a hidden flag: real failures to prove kxds handles them."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.cluster.v3 import cluster_pb2

from kxds.translate.encoded import encode
from kxds.translate.gateway import GatewayConfig
from kxds.xds.type_urls import CLUSTER


def corrupt_cluster(config: GatewayConfig, name: str) -> GatewayConfig:
    """Give one cluster a negative connect timeout, which Envoy's validation refuses (a real NACK)."""
    clusters = []
    for encoded in config.encoded.get(CLUSTER, ()):
        if encoded.name == name:
            cluster = cluster_pb2.Cluster.FromString(encoded.data)
            cluster.connect_timeout.seconds = -1
            encoded = encode(name, cluster)
        clusters.append(encoded)
    return replace(config, encoded={**config.encoded, CLUSTER: tuple(clusters)})
