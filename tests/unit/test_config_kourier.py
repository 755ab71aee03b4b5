"""config-kourier: every key parsed, invalid values reported and never served, and what each key
puts in the translated configuration (Envoy's behaviour is checked in tests/e2e/test_config_kourier.py)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from kxds.model.config import Endpoint, ExtAuthzConfig, KourierConfig, TracingConfig, parse_ext_authz, parse_kourier_config
from kxds.settings import KOURIER_LAYOUT, GatewaySettings
from kxds.translate.gateway import GatewayConfig
from kxds.engine.assemble import build_snapshot
from kxds.resources import CLUSTER, LISTENER
from tests.builders import backend, config_map, ingress, path, rule, split
from tests.certificates import CertificateAuthority, tls_secret
from tests.unit.test_translate import run, vhosts

EXT_AUTHZ = "envoy.filters.http.ext_authz"


@pytest.mark.parametrize(("data", "expected"), [
    ({}, KourierConfig()),
    ({"enable-service-access-logging": "False"}, KourierConfig(enable_service_access_logging=False)),
    ({"service-access-log-template": "%REQ(:PATH)%\n"}, KourierConfig(service_access_log_template="%REQ(:PATH)%\n")),
    ({"stream-idle-timeout": "1m30s"}, KourierConfig(stream_idle_timeout_seconds=90.0)),
    ({"trusted-hops-count": "2"}, KourierConfig(trusted_hops_count=2)),
    ({"use-remote-address": "true"}, KourierConfig(use_remote_address=True)),
    ({"disable-envoy-server-header": "true"}, KourierConfig(disable_envoy_server_header=True)),
    ({"enable-proxy-protocol": "true"}, KourierConfig(enable_proxy_protocol=True)),
    ({"listen-ip-addresses": "0.0.0.0, ::"}, KourierConfig(listen_ip_addresses=("0.0.0.0", "::"))),
    ({"cipher-suites": "ECDHE-RSA-AES128-GCM-SHA256,ECDHE-RSA-AES128-GCM-SHA256"}, KourierConfig(cipher_suites=("ECDHE-RSA-AES128-GCM-SHA256",))),
    ({"extauthz-host": "authz.auth:9000"}, KourierConfig(ext_authz=ExtAuthzConfig(endpoint=Endpoint(host="authz.auth", port=9000)))),
    ({"extauthz-host": "authz:80", "extauthz-protocol": "HTTP", "extauthz-failure-mode-allow": "true", "extauthz-max-request-body-bytes": "10",
      "extauthz-timeout": "500", "extauthz-path-prefix": "/check", "extauthz-pack-as-byte": "true"},
     KourierConfig(ext_authz=ExtAuthzConfig(endpoint=Endpoint(host="authz", port=80), protocol="http", failure_mode_allow=True,
                                            max_request_bytes=10, timeout_ms=500, path_prefix="/check", pack_as_bytes=True))),
    ({"tracing-endpoint": "otel.observability:4317"}, KourierConfig(tracing=TracingConfig(endpoint=Endpoint(host="otel.observability", port=4317)))),
    ({"tracing-endpoint": "http://otel:4318/custom", "tracing-protocol": "http/protobuf", "tracing-sampling-rate": "0.25",
      "tracing-service-name": "edge"},
     KourierConfig(tracing=TracingConfig(endpoint=Endpoint(host="otel", port=4318), protocol="http/protobuf", path="/custom",
                                         sampling_rate=0.25, service_name="edge"))),
])
def test_every_key(data: dict[str, str], expected: KourierConfig) -> None:
    parsed = parse_kourier_config(data)
    assert (parsed, parsed.problems) == (expected, ())


@pytest.mark.parametrize(("data", "attr", "message"), [
    ({"use-remote-address": "yes"}, "use_remote_address", "data.use-remote-address: invalid value 'yes': expected true or false"),
    ({"trusted-hops-count": "-1"}, "trusted_hops_count", "data.trusted-hops-count: invalid value '-1': must not be negative"),
    ({"stream-idle-timeout": "10"}, "stream_idle_timeout_seconds", "data.stream-idle-timeout: invalid duration '10'"),
    ({"listen-ip-addresses": "0.0.0.0,localhost"}, "listen_ip_addresses", "'localhost' is not an IPv4 or IPv6 address"),
    ({"extauthz-host": "authz"}, "ext_authz", "data.extauthz-host: invalid value 'authz': expected host:port"),
    ({"extauthz-host": "a:1", "extauthz-protocol": "ftp"}, "ext_authz", "data.extauthz-protocol: invalid value 'ftp'"),
    ({"extauthz-host": "a:1", "extauthz-path-prefix": "check"}, "ext_authz", "data.extauthz-path-prefix: invalid value 'check': must start with /"),
    ({"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "2"}, "tracing", "data.tracing-sampling-rate: invalid value '2'"),
    ({"tracing-endpoint": "https://otel:4318/v1/traces"}, "tracing", "data.tracing-endpoint: invalid value"),
])
def test_an_invalid_value_is_reported_by_key_and_keeps_the_previous_value(data: dict[str, str], attr: str, message: str) -> None:
    previous = parse_kourier_config({
        "use-remote-address": "true", "trusted-hops-count": "3", "stream-idle-timeout": "5s", "listen-ip-addresses": "10.0.0.1",
        "extauthz-host": "old:1", "tracing-endpoint": "old:2", "disable-envoy-server-header": "true",
    })
    parsed = parse_kourier_config({**data, "disable-envoy-server-header": "false"})
    assert parsed.invalid == {attr}
    assert len(parsed.problems) == 1 and message in parsed.problems[0] and parsed.problems[0].startswith("ConfigMap config-kourier: ")
    kept = parsed.keeping(previous)
    assert getattr(kept, attr) == getattr(previous, attr)
    assert kept.disable_envoy_server_header is False  # the valid key of the same change applies


def test_ext_authz_from_the_legacy_environment() -> None:
    env = {"KOURIER_EXTAUTHZ_HOST": "authz:9000", "KOURIER_EXTAUTHZ_PROTOCOL": "grpc", "KOURIER_EXTAUTHZ_TIMEOUT": "100"}
    keys = {"host": "KOURIER_EXTAUTHZ_HOST", "protocol": "KOURIER_EXTAUTHZ_PROTOCOL", "failure-mode-allow": "X", "max-request-body-bytes": "X",
            "timeout": "KOURIER_EXTAUTHZ_TIMEOUT", "path-prefix": "X", "pack-as-bytes": "X", "pack-as-byte": "X"}
    assert parse_ext_authz(env, prefix="env ", keys=keys) == ExtAuthzConfig(endpoint=Endpoint(host="authz", port=9000), timeout_ms=100)


def with_config(data: dict[str, str], *docs: dict[str, Any], gateway: GatewaySettings | None = None) -> GatewayConfig:
    return run(config_map("config-kourier", data), *docs, gateway=gateway)


def listeners(config: GatewayConfig) -> dict[int, listener_pb2.Listener]:
    return {lis.address.socket_address.port_value: lis for lis in config.listeners}


def manager(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    out = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(out)
    return out


TLS_INGRESS = ingress("i", rule(["h.example.com"], path(split("a"))), tls=[{"hosts": ["h.example.com"], "secretName": "c", "secretNamespace": "ns"}])


def test_listen_addresses_and_proxy_protocol_on_the_external_and_https_listeners() -> None:
    cert, key, _ = CertificateAuthority().issue("h.example.com")
    config = with_config({"listen-ip-addresses": "10.0.0.1,fd00::1", "enable-proxy-protocol": "true"},
                         TLS_INGRESS, tls_secret("c", "ns", cert, key), *backend("a", 8001),
                         gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, listen_address="0.0.0.0"))
    by_port = listeners(config)
    assert set(by_port) == {8080, 8081, 8090, 8443, 8444, 9443} - {8444}
    for port, listener in by_port.items():
        assert listener.address.socket_address.address == "10.0.0.1"
        assert [a.address.socket_address.address for a in listener.additional_addresses] == ["fd00::1"]
        filters = [f.name for f in listener.listener_filters]
        expected = ["envoy.filters.listener.proxy_protocol"] if port in (8080, 8443) else []
        assert filters == expected + (["envoy.filters.listener.tls_inspector"] if port in (8443, 9443) else [])
        assert manager(listener).use_remote_address.value  # forced on behind proxy protocol


def test_without_listen_ip_addresses_the_listen_address_setting_binds() -> None:
    config = with_config({}, gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, listen_address="127.0.0.1"))
    assert {lis.address.socket_address.address for lis in config.listeners} == {"127.0.0.1"}
    assert not any(lis.additional_addresses for lis in config.listeners)


def test_ext_authz_filter_cluster_and_per_vhost_context() -> None:
    opted_out = ingress("open", rule(["open.example.com"], path(split("a"))))
    opted_out["metadata"]["annotations"]["kourier.knative.dev/disable-extauthz"] = "true"
    labelled = ingress("i", rule(["h.example.com"], path(split("a")), path(split("a"), prefix="/.well-known/acme-challenge/x")),
                       rule(["a.ns.svc"], path(split("a")), visibility="ClusterLocal"))
    labelled["metadata"]["labels"] = {"app": "hello"}
    config = with_config({"extauthz-host": "authz:9000"}, labelled, opted_out, *backend("a", 8001))
    assert [f.name for f in manager(listeners(config)[8080]).http_filters] == [EXT_AUTHZ, "envoy.filters.http.router"]
    assert "extAuthz" in {c.name for c in config.clusters}

    def per_route(message: Any) -> ext_authz_pb2.ExtAuthzPerRoute:
        out = ext_authz_pb2.ExtAuthzPerRoute()
        message.typed_per_filter_config[EXT_AUTHZ].Unpack(out)
        return out

    internal = vhosts(config, "internal_services")
    assert dict(per_route(internal["h.example.com"]).check_settings.context_extensions) == {"app": "hello", "client": "kourier", "visibility": "ExternalIP"}
    assert dict(per_route(internal["a.ns.svc"]).check_settings.context_extensions)["visibility"] == "ClusterLocal"
    assert per_route(internal["open.example.com"]).disabled
    assert per_route(internal["internalkourier"]).disabled
    acme = next(r for r in internal["h.example.com"].routes if r.match.prefix.startswith("/.well-known"))
    assert per_route(acme).disabled
    # Listeners wait for the cluster their filter calls (make-before-break, like routes).
    snapshot = build_snapshot(config, 1)
    assert snapshot.of_type(LISTENER)["listener_8080"].needs == ((CLUSTER, "extAuthz"),)


def test_the_environment_wins_over_config_kourier_for_ext_authz() -> None:
    env = ExtAuthzConfig(endpoint=Endpoint(host="env-authz", port=1), protocol="http")
    config = with_config({"extauthz-host": "map-authz:2"}, gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, ext_authz=env))
    cluster = next(c for c in config.clusters if c.name == "extAuthz")
    assert cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "env-authz"


def test_without_ext_authz_no_filter_and_no_per_vhost_config() -> None:
    config = with_config({}, ingress("i", rule(["h.example.com"], path(split("a")))), *backend("a", 8001))
    assert [f.name for f in manager(listeners(config)[8080]).http_filters] == ["envoy.filters.http.router"]
    assert not vhosts(config, "external_services")["h.example.com"].typed_per_filter_config


def test_tracing_on_every_connection_manager() -> None:
    config = with_config({"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "0.5"})
    for listener in config.listeners:
        tracing = manager(listener).tracing
        assert tracing.provider.name == "envoy.tracers.opentelemetry"
        assert tracing.random_sampling.value == 50.0
    collector = next(c for c in config.clusters if c.name == "otel-collector")
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in collector.typed_extension_protocol_options  # gRPC: HTTP/2
