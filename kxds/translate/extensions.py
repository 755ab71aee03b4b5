"""Gateway-wide services Envoy calls out to: external authorization and the tracing collector
(knative-ingress-contract.md §10.2, §10.5, §11.2).

Each one is an HTTP filter or tracer on every connection manager plus a cluster of its own,
named as in Kourier (`extAuthz`, `otel-collector`) so dashboards keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_service_pb2, http_uri_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2

from kxds.model.config import Endpoint, ExtAuthzConfig, TracingConfig
from kxds.translate import clusters

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_AUTHZ_CLUSTER = "extAuthz"
TRACING_CLUSTER = "otel-collector"
OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"
# Paths that must never need authorization: ACME HTTP-01 challenges (cert-manager).
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def _millis(ms: int) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromMilliseconds(ms)
    return out


def ext_authz_filter(config: ExtAuthzConfig) -> hcm_pb2.HttpFilter:
    timeout = _millis(config.timeout_ms)
    authz = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=config.failure_mode_allow,
        with_request_body=ext_authz_pb2.BufferSettings(
            max_request_bytes=config.max_request_bytes, allow_partial_message=True, pack_as_bytes=config.pack_as_bytes
        ),
    )
    if config.protocol == "grpc":
        authz.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXT_AUTHZ_CLUSTER), timeout=timeout)
        )
    else:
        authz.http_service.CopyFrom(
            ext_authz_pb2.HttpService(
                server_uri=http_uri_pb2.HttpUri(uri=f"{config.protocol}://{config.endpoint}", cluster=EXT_AUTHZ_CLUSTER, timeout=timeout),
                path_prefix=config.path_prefix,
            )
        )
    return hcm_pb2.HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=clusters.packed(authz))


def ext_authz_context(visibility: str, labels: Iterable[tuple[str, str]]) -> any_pb2.Any:
    """Per-vhost check settings: what the authorization service learns about the Ingress."""
    extensions = {**dict(labels), "client": "kourier", "visibility": visibility}
    return clusters.packed(ext_authz_pb2.ExtAuthzPerRoute(check_settings=ext_authz_pb2.CheckSettings(context_extensions=extensions)))


def ext_authz_disabled() -> any_pb2.Any:
    return clusters.packed(ext_authz_pb2.ExtAuthzPerRoute(disabled=True))


def tracing(config: TracingConfig) -> hcm_pb2.HttpConnectionManager.Tracing:
    tracer = opentelemetry_pb2.OpenTelemetryConfig(service_name=config.service_name)
    if config.protocol == "grpc":
        tracer.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TRACING_CLUSTER), timeout=_millis(250))
        )
    else:
        tracer.http_service.CopyFrom(
            http_service_pb2.HttpService(
                http_uri=http_uri_pb2.HttpUri(uri=f"http://{config.endpoint}{config.path}", cluster=TRACING_CLUSTER, timeout=_millis(250))
            )
        )
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=config.sampling_rate * 100),
        provider=http_tracer_pb2.Tracing.Http(name=OPENTELEMETRY_TRACER, typed_config=clusters.packed(tracer)),
    )


def service_clusters(ext_authz: ExtAuthzConfig | None, tracer: TracingConfig | None) -> list[cluster_pb2.Cluster]:
    out = []
    if ext_authz is not None:
        out.append(_service_cluster(EXT_AUTHZ_CLUSTER, ext_authz.endpoint, http2=ext_authz.protocol == "grpc", tls=ext_authz.protocol == "https"))
    if tracer is not None:
        out.append(_service_cluster(TRACING_CLUSTER, tracer.endpoint, http2=tracer.protocol == "grpc", tls=False))
    return out


def _service_cluster(name: str, endpoint: Endpoint, *, http2: bool, tls: bool) -> cluster_pb2.Cluster:
    """A DNS-resolved cluster for a host:port outside the Ingress world."""
    out = cluster_pb2.Cluster(
        name=name,
        connect_timeout=clusters.CONNECT_TIMEOUT,
        type=cluster_pb2.Cluster.STRICT_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        load_assignment=clusters.static_assignment(name, [endpoint.host], endpoint.port),
    )
    if http2:
        clusters.speak_http2(out)
    if tls:
        out.transport_socket.CopyFrom(clusters.tls_socket(tls_pb2.UpstreamTlsContext(sni=endpoint.host)))
    return out
