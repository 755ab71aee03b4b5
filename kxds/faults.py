"""Test-only faults, switched on by a hidden flag: real failures to prove kxds handles them."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2

from kxds.translate.encoded import encode
from kxds.resources import CLUSTER, ROUTE, Encoded


@dataclass(frozen=True, slots=True)
class Faults:
    """Which faults are on: `cluster` names a cluster to corrupt, `host_prefix` the hosts whose
    virtual hosts to corrupt. Applied to every resource kxds serves, full translation or step."""

    cluster: str = ""
    host_prefix: str = ""

    def __bool__(self) -> bool:
        return bool(self.cluster or self.host_prefix)

    def __call__(self, type_url: str, encoded: Encoded) -> Encoded:
        if type_url == CLUSTER and self.cluster and encoded.name == self.cluster:
            return _corrupt_cluster(encoded)
        if type_url == ROUTE and self.host_prefix:
            return _corrupt_hosts(encoded, self.host_prefix)
        return encoded


def _corrupt_cluster(encoded: Encoded) -> Encoded:
    """A negative connect timeout, which Envoy's validation refuses (a real NACK)."""
    cluster = cluster_pb2.Cluster.FromString(encoded.data)
    cluster.connect_timeout.seconds = -1
    return encode(encoded.name, cluster)


def _corrupt_hosts(encoded: Encoded, prefix: str) -> Encoded:
    """A 20,000-byte request header on every virtual host serving a host that starts with
    `prefix`: past Envoy's 16 KiB HeaderValue limit, so Envoy rejects the route configuration
    holding it, quoting a dump of it cut at a few kilobytes (the message names other vhosts)."""
    table = route_pb2.RouteConfiguration.FromString(encoded.data)
    touched = False
    for vhost in table.virtual_hosts:
        if any(domain.startswith(prefix) for domain in vhost.domains):
            vhost.request_headers_to_add.add(header=base_pb2.HeaderValue(key="x-corrupt", value="v" * 20000))
            touched = True
    return encode(encoded.name, table) if touched else encoded
