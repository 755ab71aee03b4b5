"""Gateway listeners and their HTTP connection manager (knative-ingress-contract.md §10.1–§10.2).

Listeners change only with settings and config-kourier, never with an Ingress: per-Ingress churn
goes to RDS and CDS/EDS, so no connection is ever drained because a route changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from kxds.model.config import KourierConfig
from kxds.settings import SCOPED_LAYOUT, GatewaySettings
from kxds.translate import extensions, names, scopes, tls
from kxds.translate.clusters import ads_source, packed, tls_socket
from kxds.resources import ROUTE, SECRET, Refs, refs

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
PROXY_PROTOCOL = "envoy.filters.listener.proxy_protocol"
RDS_INITIAL_FETCH_TIMEOUT = duration_pb2.Duration(seconds=10)


def listen_addresses(gateway: GatewaySettings, kourier: KourierConfig) -> tuple[str, ...]:
    """config-kourier's listen-ip-addresses, else --listen-address: the first is each listener's
    address, the others its additional addresses (IPv4 and IPv6 on one listener)."""
    return kourier.listen_ip_addresses or (gateway.listen_address,)


def plain_listeners(gateway: GatewaySettings, kourier: KourierConfig) -> list[listener_pb2.Listener]:
    """External 8080, internal 8081 and the probe listener 8090 (which serves the external routes).

    Proxy protocol, when on, applies to the external listener only: the internal and probe
    listeners are reached directly by pods and the prober, never through a load balancer."""
    ports, addresses = gateway.ports, listen_addresses(gateway, kourier)
    scoped = gateway.route_layout == SCOPED_LAYOUT
    return [
        _listener(addresses, ports.external_http, names.EXTERNAL_ROUTES, kourier, proxy_protocol=kourier.enable_proxy_protocol, scoped=scoped),
        _listener(addresses, ports.internal_http, names.INTERNAL_ROUTES, kourier, proxy_protocol=False, scoped=scoped),
        _listener(addresses, ports.probe_http, names.EXTERNAL_ROUTES, kourier, proxy_protocol=False, scoped=scoped),
    ]


@dataclass(frozen=True, slots=True)
class SniChain:
    """One HTTPS filter chain: the hosts it serves (empty: any SNI) and its certificate's SDS name."""

    server_names: tuple[str, ...]
    secret: str


def tls_listener(
    addresses: tuple[str, ...], port: int, route_config: str, chains: list[SniChain], kourier: KourierConfig, *, proxy_protocol: bool
) -> listener_pb2.Listener:
    """An HTTPS listener: one filter chain per certificate, chosen by SNI (tls_inspector)."""
    manager = packed(connection_manager(route_config, kourier))
    filter_chains = []
    # Most specific first; a chain without server names is the fallback for any other SNI.
    for chain in sorted(chains, key=lambda c: (not c.server_names, c.secret)):
        context = tls.downstream_context(chain.secret, kourier.cipher_suites)
        filter_chains.append(
            listener_components_pb2.FilterChain(
                name=f"{'sni' if chain.server_names else 'default'}:{chain.secret}",
                filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=sorted(chain.server_names)),
                transport_socket=tls_socket(context),
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=manager)],
            )
        )
    listener = _bound(addresses, port, proxy_protocol)
    # The proxy protocol header comes first on the wire, the TLS ClientHello after it.
    listener.listener_filters.append(listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR, typed_config=packed(tls_inspector_pb2.TlsInspector())))
    listener.filter_chains.extend(filter_chains)
    return listener


def _address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _bound(addresses: tuple[str, ...], port: int, proxy_protocol: bool) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=names.listener_name(port),
        address=_address(addresses[0], port),
        additional_addresses=[listener_pb2.AdditionalAddress(address=_address(a, port)) for a in addresses[1:]],
    )
    if proxy_protocol:
        listener.listener_filters.append(
            listener_components_pb2.ListenerFilter(name=PROXY_PROTOCOL, typed_config=packed(proxy_protocol_pb2.ProxyProtocol()))
        )
    return listener


def _listener(addresses: tuple[str, ...], port: int, route_config: str, kourier: KourierConfig, *, proxy_protocol: bool,
              scoped: bool) -> listener_pb2.Listener:
    listener = _bound(addresses, port, proxy_protocol)
    manager = connection_manager(route_config, kourier, scoped=scoped)
    listener.filter_chains.append(listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=packed(manager))]))
    return listener


def connection_manager(route_config: str, kourier: KourierConfig, *, scoped: bool = False) -> hcm_pb2.HttpConnectionManager:
    """The HTTP connection manager routing with `route_config` (Kourier's layout), or with the
    scopes of that route table (the scoped layout, translate/scopes.py)."""
    manager = hcm_pb2.HttpConnectionManager(
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stat_prefix="ingress_http",
        http_filters=[
            *([scopes.host_folding_filter()] if scoped else []),
            *([extensions.ext_authz_filter(kourier.ext_authz)] if kourier.ext_authz else []),
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=packed(router_pb2.Router())),
        ],
        # Behind a proxy-protocol load balancer the connection's source is the client's address.
        use_remote_address=wrappers_pb2.BoolValue(value=kourier.use_remote_address or kourier.enable_proxy_protocol),
        xff_num_trusted_hops=kourier.trusted_hops_count,
    )
    # A gateway whose routes never come still starts serving (with no routes) after this long.
    source = ads_source()
    source.initial_fetch_timeout.CopyFrom(RDS_INITIAL_FETCH_TIMEOUT)
    if scoped:
        manager.scoped_routes.CopyFrom(scopes.scoped_routes(route_config, source))
        manager.early_header_mutation_extensions.append(scopes.listener_mark(route_config))
    else:
        manager.rds.CopyFrom(hcm_pb2.Rds(config_source=source, route_config_name=route_config))
    if kourier.tracing is not None:
        manager.tracing.CopyFrom(extensions.tracing(kourier.tracing))
        manager.generate_request_id.value = True
    # Envoy's 5 min default cut long requests (net-kourier#430); Kourier's default 0s disables it.
    manager.stream_idle_timeout.FromNanoseconds(round(kourier.stream_idle_timeout_seconds * 1e9))
    if kourier.disable_envoy_server_header:
        manager.server_header_transformation = hcm_pb2.HttpConnectionManager.PASS_THROUGH
    if kourier.enable_service_access_logging:
        manager.access_log.append(_stdout_access_log(kourier.service_access_log_template))
    return manager


def asks(listener: listener_pb2.Listener) -> Refs:
    """(type URL, name) of what a gateway subscribes to once it has this listener: the route
    configuration each connection manager names over RDS and the certificates of its TLS chains."""
    out: set[tuple[str, str]] = set()
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            if network_filter.typed_config.Unpack(manager) and manager.HasField("rds"):
                out.add((ROUTE, manager.rds.route_config_name))
        context = tls_pb2.DownstreamTlsContext()
        if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(context):
            out.update((SECRET, c.name) for c in context.common_tls_context.tls_certificate_sds_secret_configs)
    return refs(out)


def _stdout_access_log(template: str) -> accesslog_pb2.AccessLog:
    log = file_pb2.FileAccessLog(path="/dev/stdout")
    if template:
        log.log_format.CopyFrom(
            substitution_format_string_pb2.SubstitutionFormatString(text_format_source=base_pb2.DataSource(inline_string=template))
        )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=packed(log))
