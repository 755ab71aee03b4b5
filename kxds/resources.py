"""The vocabulary the translator and the xDS layer share: type URLs and encoded resources.

A leaf module (it imports nothing of kxds), so the translator can produce what the xDS side serves
without either package importing the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

# xDS resource type URLs: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-types
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SCOPED_ROUTE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"


# (type URL, name) pairs: what a resource needs applied before it is usable, or what a gateway asks
# for once it has it. A sorted tuple, not a set: nearly all hold one pair, and a one-pair frozenset
# is a 216-byte object against a tuple's 56 (~50,000 of them at 10,000 Ingresses).
Refs = tuple[tuple[str, str], ...]


def refs(pairs: Iterable[tuple[str, str]]) -> Refs:
    """`pairs` as Refs: each once, in order, so equal sets are equal tuples."""
    return tuple(sorted(set(pairs)))


def content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, slots=True, init=False)
class Encoded:
    """One resource as it is served: its name, its deterministic bytes and their content version."""

    name: str
    data: bytes = field(repr=False)
    version: str

    def __init__(self, name: str, data: bytes, version: str) -> None:
        # Through the slots' own descriptors: a frozen dataclass's generated __init__ goes through
        # object.__setattr__ per field, twice as slow (~130,000 of these in a cold translation).
        _ENCODED_NAME(self, name)
        _ENCODED_DATA(self, data)
        _ENCODED_VERSION(self, version)


_ENCODED_NAME, _ENCODED_DATA, _ENCODED_VERSION = (getattr(Encoded, f).__set__ for f in ("name", "data", "version"))
