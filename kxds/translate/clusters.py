"""Services and EndpointSlices → Envoy clusters (CDS) and load assignments (EDS).

Clusters are named `<namespace>/<service>` as in Kourier. Endpoints travel over EDS, so an
endpoint change is one ClusterLoadAssignment update and never touches CDS.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, message

from kxds.model.service import EndpointSlice, Service, ServicePort
from kxds.translate import names

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


def load_assignment(service: Service, port: ServicePort, slices: Iterable[EndpointSlice]) -> endpoint_pb2.ClusterLoadAssignment:
    """Ready addresses of every slice × the slice port named like the Service port."""
    endpoints: set[tuple[str, int]] = set()
    for piece in slices:
        target = _slice_port(piece, port)
        if target is not None:
            endpoints.update((address, target) for address in piece.addresses)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=names.cluster_name(service.namespace, service.name))
    locality = assignment.endpoints.add()
    for address, number in sorted(endpoints):
        locality.lb_endpoints.append(_lb_endpoint(address, number))
    return assignment


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
