"""Services and EndpointSlices → Envoy clusters (CDS) and load assignments (EDS).

Clusters are named `<namespace>/<service>` as in Kourier. Endpoints travel over EDS, so an
endpoint change is one ClusterLoadAssignment update and never touches CDS.

What is served is written as bytes (`eds_cluster_data`, `load_assignment_data`): a cluster's name
is its first field, so a cluster is its name followed by bytes every cluster with the same settings
shares, and an endpoint's bytes repeat in every assignment naming it. The message builders beside
them (`cluster`, `load_assignment`) are what the bytes must equal (tests compare the two).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, message

from kxds.model.service import EndpointSlice, Service, ServicePort
from kxds.translate import names
from kxds.translate.encoded import length_delimited, serialized

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_SOCKET = "envoy.transport_sockets.tls"
CONNECT_TIMEOUT = duration_pb2.Duration(seconds=5)


def packed(msg: message.Message) -> any_pb2.Any:
    """A message as a typed_config, its bytes deterministic (maps sorted) like every resource's."""
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)
    return out


def tls_socket(context: message.Message) -> base_pb2.TransportSocket:
    """The TLS transport socket around a Downstream- or UpstreamTlsContext."""
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed(context))


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3)


def cluster(service: Service, port: ServicePort, *, http2: bool, upstream_tls: tls_pb2.UpstreamTlsContext | None = None) -> cluster_pb2.Cluster:
    name = names.cluster_name(service.namespace, service.name)
    out = cluster_pb2.Cluster(name=name, connect_timeout=CONNECT_TIMEOUT)
    if service.type == "ExternalName":
        # The external name is resolved by Envoy; used by DomainMapping and host-rewrite hairpins.
        out.type = cluster_pb2.Cluster.LOGICAL_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(static_assignment(name, [service.external_name], port.port))
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ads_source())
    if http2:
        speak_http2(out)
    if upstream_tls is not None:
        out.transport_socket.CopyFrom(tls_socket(upstream_tls))
    return out


def speak_http2(out: cluster_pb2.Cluster) -> None:
    """HTTP/2 with prior knowledge (h2c, or h2 under TLS) to the cluster's hosts."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    out.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(options))


def eds_settings(*, http2: bool, upstream_tls: tls_pb2.UpstreamTlsContext | None = None) -> bytes:
    """An EDS cluster's bytes without its name: what every cluster with these settings shares."""
    out = cluster_pb2.Cluster(connect_timeout=CONNECT_TIMEOUT, type=cluster_pb2.Cluster.EDS)
    out.eds_cluster_config.eds_config.CopyFrom(ads_source())
    if http2:
        speak_http2(out)
    if upstream_tls is not None:
        out.transport_socket.CopyFrom(tls_socket(upstream_tls))
    return serialized(out)


def eds_cluster_data(name: str, settings: bytes) -> bytes:
    """The EDS cluster `name` with `settings` (from `eds_settings`), as `cluster` serialises it."""
    return length_delimited(_CLUSTER_NAME, name.encode()) + settings


def load_assignment(service: Service, port: ServicePort, slices: Iterable[EndpointSlice]) -> endpoint_pb2.ClusterLoadAssignment:
    """Ready addresses of every slice × the slice port named like the Service port."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=names.cluster_name(service.namespace, service.name))
    locality = assignment.endpoints.add()
    for address, number in _endpoints(port, slices):
        locality.lb_endpoints.append(_lb_endpoint(address, number))
    return assignment


def load_assignment_data(service: Service, port: ServicePort, slices: Iterable[EndpointSlice]) -> bytes:
    """`load_assignment`'s deterministic bytes, from each endpoint's bytes made once per process."""
    locality = b"".join([length_delimited(_LB_ENDPOINTS, _lb_endpoint_data(a, n)) for a, n in _endpoints(port, slices)])
    name = names.cluster_name(service.namespace, service.name)
    return length_delimited(_ASSIGNMENT_NAME, name.encode()) + length_delimited(_ASSIGNMENT_ENDPOINTS, locality)


def _endpoints(port: ServicePort, slices: Iterable[EndpointSlice]) -> list[tuple[str, int]]:
    endpoints: set[tuple[str, int]] = set()
    for piece in slices:
        target = _slice_port(piece, port)
        if target is not None:
            endpoints.update((address, target) for address in piece.addresses)
    return sorted(endpoints)


@functools.lru_cache(maxsize=1 << 16)  # a pod's address and port, in every assignment naming it
def _lb_endpoint_data(address: str, port: int) -> bytes:
    return serialized(_lb_endpoint(address, port))


def _slice_port(piece: EndpointSlice, port: ServicePort) -> int | None:
    # The slice port carries the Service port's name, which resolves named target ports too.
    for candidate in piece.ports:
        if candidate.name == port.name:
            return candidate.port
    return port.target_port if isinstance(port.target_port, int) else None


def _lb_endpoint(address: str, port: int) -> endpoint_components_pb2.LbEndpoint:
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))
        )
    )


def static_assignment(name: str, hosts: list[str], port: int) -> endpoint_pb2.ClusterLoadAssignment:
    """Fixed hosts (names or addresses) on one port, for clusters Envoy resolves itself."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    locality = assignment.endpoints.add()
    locality.lb_endpoints.extend(_lb_endpoint(h, port) for h in hosts)
    return assignment


def _field(descriptor: Any, name: str) -> int:
    return int(descriptor.fields_by_name[name].number)


# The byte layouts above, checked against the descriptors: a cluster's name is its first field; an
# assignment is its name, then one locality holding only lb_endpoints.
_CLUSTER_NAME = _field(cluster_pb2.Cluster.DESCRIPTOR, "name")
_ASSIGNMENT_NAME = _field(endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR, "cluster_name")
_ASSIGNMENT_ENDPOINTS = _field(endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR, "endpoints")
_LB_ENDPOINTS = _field(endpoint_components_pb2.LocalityLbEndpoints.DESCRIPTOR, "lb_endpoints")
if _CLUSTER_NAME != min(f.number for f in cluster_pb2.Cluster.DESCRIPTOR.fields) or _ASSIGNMENT_NAME > _ASSIGNMENT_ENDPOINTS:
    raise ImportError("Envoy's cluster or load assignment field numbers no longer fit the byte layout in kxds.translate.clusters")
