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
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

from kxds.model.config import KourierConfig
from kxds.settings import GatewaySettings
from kxds.translate import names, tls
from kxds.translate.clusters import ads_source

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
RDS_INITIAL_FETCH_TIMEOUT = duration_pb2.Duration(seconds=10)


def packed(msg: message.Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def plain_listeners(gateway: GatewaySettings, kourier: KourierConfig) -> list[listener_pb2.Listener]:
    """External 8080, internal 8081 and the probe listener 8090 (which serves the external routes)."""
    ports = gateway.ports
    return [
        _listener(gateway.listen_address, ports.external_http, names.EXTERNAL_ROUTES, kourier),
        _listener(gateway.listen_address, ports.internal_http, names.INTERNAL_ROUTES, kourier),
        _listener(gateway.listen_address, ports.probe_http, names.EXTERNAL_ROUTES, kourier),
    ]


@dataclass(frozen=True, slots=True)
class SniChain:
    """One HTTPS filter chain: the hosts it serves (empty: any SNI) and its certificate's SDS name."""

    server_names: tuple[str, ...]
    secret: str


def tls_listener(address: str, port: int, route_config: str, chains: list[SniChain], kourier: KourierConfig) -> listener_pb2.Listener:
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
                transport_socket=base_pb2.TransportSocket(name=tls.TLS_SOCKET, typed_config=packed(context)),
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=manager)],
            )
        )
    return listener_pb2.Listener(
        name=names.listener_name(port),
        address=_address(address, port),
        listener_filters=[listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR, typed_config=packed(tls_inspector_pb2.TlsInspector()))],
        filter_chains=filter_chains,
    )


def _address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _listener(address: str, port: int, route_config: str, kourier: KourierConfig) -> listener_pb2.Listener:
    chain = listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=packed(connection_manager(route_config, kourier)))]
    )
    return listener_pb2.Listener(
        name=names.listener_name(port),
        address=_address(address, port),
        filter_chains=[chain],
    )


def connection_manager(route_config: str, kourier: KourierConfig) -> hcm_pb2.HttpConnectionManager:
    source = ads_source()
    source.initial_fetch_timeout.CopyFrom(RDS_INITIAL_FETCH_TIMEOUT)
    manager = hcm_pb2.HttpConnectionManager(
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stat_prefix="ingress_http",
        rds=hcm_pb2.Rds(config_source=source, route_config_name=route_config),
        http_filters=[hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=packed(router_pb2.Router()))],
        use_remote_address=wrappers_pb2.BoolValue(value=kourier.use_remote_address),
        xff_num_trusted_hops=kourier.trusted_hops_count,
    )
    # Envoy's 5 min default cut long requests (net-kourier#430); Kourier's default 0s disables it.
    manager.stream_idle_timeout.FromNanoseconds(round(kourier.stream_idle_timeout_seconds * 1e9))
    if kourier.disable_envoy_server_header:
        manager.server_header_transformation = hcm_pb2.HttpConnectionManager.PASS_THROUGH
    if kourier.enable_service_access_logging:
        manager.access_log.append(_stdout_access_log(kourier.service_access_log_template))
    return manager


def _stdout_access_log(template: str) -> accesslog_pb2.AccessLog:
    log = file_pb2.FileAccessLog(path="/dev/stdout")
    if template:
        log.log_format.CopyFrom(
            substitution_format_string_pb2.SubstitutionFormatString(text_format_source=base_pb2.DataSource(inline_string=template))
        )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=packed(log))
