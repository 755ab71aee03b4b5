"""Test-only faults, switched on by a hidden flag: real failures to prove kxds handles them."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2

from kxds.translate.encoded import encode
from kxds.translate.gateway import GatewayConfig
from kxds.xds.type_urls import CLUSTER, ROUTE


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


def corrupt_hosts(config: GatewayConfig, prefix: str) -> GatewayConfig:
    """Add a 20,000-byte request header to every virtual host serving a host that starts with
    `prefix`: past Envoy's 16 KiB HeaderValue limit, so Envoy rejects the route configuration
    holding it, quoting a dump of it cut at a few kilobytes (the message names other vhosts)."""
    tables = []
    for encoded in config.encoded.get(ROUTE, ()):
        table = route_pb2.RouteConfiguration.FromString(encoded.data)
        touched = False
        for vhost in table.virtual_hosts:
            if any(domain.startswith(prefix) for domain in vhost.domains):
                vhost.request_headers_to_add.add(header=base_pb2.HeaderValue(key="x-corrupt", value="v" * 20000))
                touched = True
        tables.append(encode(encoded.name, table) if touched else encoded)
    return replace(config, encoded={**config.encoded, ROUTE: tuple(tables)})
