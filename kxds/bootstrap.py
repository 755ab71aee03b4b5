"""An Envoy bootstrap equivalent to Kourier's (knative-ingress-contract.md §13), pointed at kxds."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import yaml

from kxds.model.fields import host_port
from kxds.pki import CA_FILE, GATEWAY_SDS_SECRET, SDS_FILE
from kxds.settings import DEFAULT_NODE_CLUSTER, DEFAULT_NODE_ID

# The admin paths Kourier's stats listener exposes (GET), plus POST /drain_listeners.
_STATS_PATHS = "/(certs|stats(/prometheus)?|server_info|clusters|listeners|ready)?"


def split_address(address: str) -> tuple[str, int]:
    parsed = host_port(address)
    if parsed is None:
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    return parsed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


@dataclass(frozen=True, slots=True, kw_only=True)
class XdsClientTls:
    """File paths, as the gateway sees them: the CA that signed kxds's certificate, and the
    gateway's own certificate and key when kxds requires one (mTLS)."""

    ca: str
    cert: str = ""
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class XdsClientPki:
    """kxds's own CA (the default): the directory, as the gateway sees it, holding the bundle kxds
    provisions (`ca.crt`, and `sds.yaml` with the gateway's certificate). Envoy re-reads the
    certificate whenever the directory changes, so a rotation needs no restart."""

    directory: str


def _tls_socket(tls: XdsClientTls | XdsClientPki, host: str) -> dict[str, Any]:
    san = {"san_type": "IP_ADDRESS" if _is_ip(host) else "DNS", "matcher": {"exact": host}}
    ca = f"{tls.directory.rstrip('/')}/{CA_FILE}" if isinstance(tls, XdsClientPki) else tls.ca
    context: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": ca}, "match_typed_subject_alt_names": [san]},
    }
    if isinstance(tls, XdsClientPki):
        directory = tls.directory.rstrip("/")
        source = {"path_config_source": {"path": f"{directory}/{SDS_FILE}", "watched_directory": {"path": directory}},
                  "resource_api_version": "V3"}
        context["tls_certificate_sds_secret_configs"] = [{"name": GATEWAY_SDS_SECRET, "sds_config": source}]
    elif tls.cert:
        context["tls_certificates"] = [{"certificate_chain": {"filename": tls.cert}, "private_key": {"filename": tls.key}}]
    upstream: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": context,
    }
    if not _is_ip(host):
        upstream["sni"] = host
    return {"name": "envoy.transport_sockets.tls", "typed_config": upstream}


def bootstrap(xds_address: str, admin_port: int, *, node_id: str = DEFAULT_NODE_ID, stats_port: int = 0, trim_stats: bool = False,
              tls: XdsClientTls | XdsClientPki | None = None, delta: bool = True) -> dict[str, Any]:
    xds_host, xds_port = split_address(xds_address)
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    clusters: list[dict[str, Any]] = [
        {
            "name": "service_stats",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": _assignment("service_stats", "127.0.0.1", admin_port),
        },
        {
            "name": "xds_cluster",
            "type": "STATIC" if _is_ip(xds_host) else "STRICT_DNS",
            "connect_timeout": "1s",
            "load_assignment": _assignment("xds_cluster", xds_host, xds_port),
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {
                        "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "5s"}}
                    },
                }
            },
        },
    ]
    if tls is not None:
        # kxds's certificate must carry the address the gateway dials (DNS or IP SAN).
        clusters[1]["transport_socket"] = _tls_socket(tls, xds_host)
    config: dict[str, Any] = {
        "node": {"id": node_id, "cluster": DEFAULT_NODE_CLUSTER},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                # Envoy's own defaults for this (100 requests, then 10 a second) held every change
                # after the first dozen creates to ~100 ms per request, and a new Knative Service
                # takes five or six: measured 0.5 s per create at any size. A bound stays against a
                # runaway gateway; a burst of changes is coalesced by kxds anyway.
                "rate_limit_settings": {"max_tokens": 1000, "fill_rate": 100},
                # Envoy repeats its node (516 extensions: 61 KB) in every request unless told not
                # to; kxds reads it from a stream's first request only. Four or five ACKs follow
                # each change, so repeating it cost kxds ~0.4 ms of decoding alone per change.
                "set_node_on_first_message_only": True,
                # Reconnect quickly when kxds restarts: Envoy's default backoff grows to 30 s, so a
                # change made while kxds was down could wait that long to arrive.
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster", "retry_policy": {
                    "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}}}}],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {"listeners": [_stats_listener(stats_port)] if stats_port else [], "clusters": clusters},
        # Envoy's periodic stats flush (every 5 s by default) latches every counter and gauge on the
        # main thread, which also applies xDS: at 10,000 Knative Services (20,000 clusters) it held
        # that thread for 0.4-0.6 s each time (measured), so one change in ten waited for it. With
        # no stats sinks configured the flush feeds nothing: flush only when the admin interface
        # is read (a Prometheus scrape of /stats/prometheus still sees current values).
        "stats_flush_on_admin": True,
        "admin": {
            "address": _socket("127.0.0.1", admin_port),
            "access_log": [
                {
                    "name": "envoy.access_loggers.stdout",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"},
                }
            ],
        },
    }
    if trim_stats:
        # Per-cluster statistics dominate Envoy's memory at thousands of Knative revisions
        # (about 100 bytes per counter per cluster, envoy#16418): drop them, and create the
        # remaining traffic statistics only when first used.
        config["stats_config"] = {"stats_matcher": {"exclusion_list": {"patterns": [{"prefix": "cluster."}]}}}
        config["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
    return config


def render_bootstrap(*args: Any, **kwargs: Any) -> str:
    return yaml.safe_dump(bootstrap(*args, **kwargs), sort_keys=False)


def _assignment(name: str, host: str, port: int) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}]}


def _stats_listener(port: int) -> dict[str, Any]:
    def route(regex: str, method: str) -> dict[str, Any]:
        return {
            "match": {
                "safe_regex": {"regex": regex},
                "headers": [{"name": ":method", "string_match": {"exact": method}}],
            },
            "route": {"cluster": "service_stats"},
        }

    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "stats_server",
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "admin_interface",
                    "domains": ["*"],
                    "routes": [route(_STATS_PATHS, "GET"), route("/drain_listeners", "POST")],
                }
            ]
        },
    }
    return {
        "name": "stats_listener",
        "address": {"socket_address": {"address": "::", "port_value": port, "ipv4_compat": True}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
    }


def render_bootstrap_configmap(namespace: str, name: str, *args: Any, **kwargs: Any) -> str:
    """The bootstrap wrapped in a ConfigMap (key envoy-bootstrap.yaml), as Kourier ships it."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"networking.knative.dev/ingress-provider": "kourier"}},
        "data": {"envoy-bootstrap.yaml": render_bootstrap(*args, **kwargs)},
    }
    return "# Generated by `kxds bootstrap --configmap`: regenerate rather than edit.\n" + yaml.dump(config_map, Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the embedded bootstrap stays readable."""


def _block_strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_BlockDumper.add_representer(str, _block_strings)
