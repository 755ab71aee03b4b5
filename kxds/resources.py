"""The vocabulary the translator and the xDS layer share: type URLs and encoded resources.

A leaf module (it imports nothing of kxds), so the translator can produce what the xDS side serves
without either package importing the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# xDS resource type URLs: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-types
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SCOPED_ROUTE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"


def content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One resource as it is served: its name, its deterministic bytes and their content version."""

    name: str
    data: bytes = field(repr=False)
    version: str
