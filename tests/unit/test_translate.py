"""The translator: a golden file for Serving's example, then one behaviour per test."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kxds.controller import build_world
from kxds.model.objects import Filters, parse_object
from kxds.render import render
from kxds.settings import DEFAULT_INGRESS_CLASS, KOURIER_LAYOUT, GatewaySettings
from kxds.translate.gateway import BACKEND_NOT_FOUND, DOMAIN_CONFLICT, GatewayConfig, translate
from tests.builders import backend, endpoint_slice, ingress, path, rule, service, split

ROOT = Path(__file__).parents[2]
GOLDEN = Path(__file__).parent / "golden" / "hello.json"
FILTERS = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")


def test_golden_serving_example() -> None:
    rendered = render(ROOT / "examples", GatewaySettings(route_layout=KOURIER_LAYOUT), DEFAULT_INGRESS_CLASS, "knative-serving")
    text = json.dumps(rendered, indent=1, sort_keys=True) + "\n"
    if os.environ.get("KXDS_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "translation changed: review, then regenerate with KXDS_UPDATE_GOLDEN=1"


def run(*docs: dict[str, Any], gateway: GatewaySettings | None = None) -> GatewayConfig:
    parsed = [parse_object(d, FILTERS) for d in docs]
    return translate(build_world(p[1] for p in parsed if p is not None), gateway or GatewaySettings(route_layout=KOURIER_LAYOUT))


def vhosts(config: GatewayConfig, route_config: str) -> dict[str, Any]:
    """Host → its vhost (hosts sharing a route list share a vhost)."""
    found = next(r for r in config.route_configs if r.name == route_config)
    return {d: v for v in found.virtual_hosts for d in v.domains if not d.endswith(":*")}


def test_visibility_external_on_both_cluster_local_only_internal() -> None:
    config = run(
        ingress("i", rule(["pub.example.com"], path(split("a"))), rule(["a.ns", "a.ns.svc"], path(split("a")), visibility="ClusterLocal")),
        *backend("a", 8001),
    )
    assert set(vhosts(config, "external_services")) == {"pub.example.com"}
    assert set(vhosts(config, "internal_services")) == {"pub.example.com", "a.ns", "a.ns.svc", "internalkourier"}
    assert list(vhosts(config, "external_services")["pub.example.com"].domains) == ["pub.example.com", "pub.example.com:*"]
    assert config.outcomes["ns/i"].programmed


def test_routes_longest_prefix_first_with_probe_copies_ahead() -> None:
    config = run(ingress("i", rule(["h.example.com"], path(split("a")), path(split("a"), prefix="/foo"))), *backend("a", 8001))
    routes = vhosts(config, "external_services")["h.example.com"].routes
    assert [(r.match.prefix, [h.name for h in r.match.headers]) for r in routes] == [
        ("/foo", ["K-Network-Hash"]), ("/foo", []), ("/", ["K-Network-Hash"]), ("/", []),
    ]
    probe = routes[0]
    assert probe.match.headers[0].string_match.exact == "override"
    assert probe.request_headers_to_add[0].header.key == "K-Network-Hash"
    assert len(probe.request_headers_to_add[0].header.value) == 64


def test_headers_overwrite_and_weights() -> None:
    config = run(
        ingress("i", rule(["h.example.com"], path(split("a", 90, Who="a"), split("b", 10, Who="b"), append={"Pre": "x"}, headers={"Tag": "t", "Any": ""}))),
        *backend("a", 8001), *backend("b", 8002),
    )
    route = vhosts(config, "external_services")["h.example.com"].routes[1]
    assert [(h.name, h.WhichOneof("header_match_specifier")) for h in route.match.headers] == [("Any", "present_match"), ("Tag", "string_match")]
    assert [(c.name, c.weight.value) for c in route.route.weighted_clusters.clusters] == [("ns/a", 90), ("ns/b", 10)]
    assert route.request_headers_to_add[0].append_action == route.request_headers_to_add[0].OVERWRITE_IF_EXISTS_OR_ADD
    assert route.route.weighted_clusters.clusters[1].request_headers_to_add[0].header.value == "b"
    assert route.route.timeout.ToNanoseconds() == 0
    assert not route.route.HasField("retry_policy")
    assert route.route.upgrade_configs[0].upgrade_type == "websocket"


def test_zero_percent_split_is_kept_with_weight_zero() -> None:
    config = run(ingress("i", rule(["h.example.com"], path(split("a", 100), split("b", 0)))), *backend("a", 8001), *backend("b", 8002))
    clusters = vhosts(config, "external_services")["h.example.com"].routes[1].route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in clusters] == [("ns/a", 100), ("ns/b", 0)]


@pytest.mark.parametrize("disabled", [False, True])
def test_redirected_only_external_ip_rules_and_only_when_enabled(disabled: bool) -> None:
    config = run(
        ingress("i", rule(["pub.example.com"], path(split("a"))), rule(["a.ns"], path(split("a")), visibility="ClusterLocal"), httpOption="Redirected"),
        *backend("a", 8001),
        gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, http_option_disabled=disabled),
    )
    for name in ("external_services", "internal_services"):
        route = vhosts(config, name)["pub.example.com"].routes[-1]
        assert route.HasField("redirect") is not disabled
        if not disabled:
            assert route.redirect.https_redirect
    assert vhosts(config, "internal_services")["a.ns"].routes[-1].HasField("route")


def test_domain_conflict_older_ingress_wins() -> None:
    config = run(
        ingress("newer", rule(["h.example.com"], path(split("a"))), created="2026-02-01T00:00:00Z"),
        ingress("older", rule(["h.example.com"], path(split("a"))), created="2026-01-01T00:00:00Z"),
        *backend("a", 8001),
    )
    assert config.outcomes["ns/older"].programmed
    assert config.outcomes["ns/newer"].reason == DOMAIN_CONFLICT
    assert vhosts(config, "external_services")["h.example.com"].name == "(ns/older).Domain[h.example.com]"


def test_missing_service_skips_only_that_ingress() -> None:
    config = run(
        ingress("broken", rule(["b.example.com"], path(split("missing")))),
        ingress("fine", rule(["f.example.com"], path(split("a")))),
        *backend("a", 8001),
    )
    assert config.outcomes["ns/broken"].reason == BACKEND_NOT_FOUND
    assert "spec.rules[0].http.paths[0].splits[0].serviceName: Service ns/missing not found" in config.outcomes["ns/broken"].message
    assert set(vhosts(config, "external_services")) == {"f.example.com"}
    assert [c.name for c in config.clusters] == ["ns/a"]


def test_unknown_port_is_reported() -> None:
    config = run(ingress("i", rule(["h.example.com"], path(split("a", port=81)))), *backend("a", 8001))
    assert "servicePort: Service ns/a has no port 81" in config.outcomes["ns/i"].message


def test_h2c_cluster_and_its_opt_out() -> None:
    docs = [*backend("g", 8001, port_name="http2")]
    on = run(ingress("i", rule(["h.example.com"], path(split("g")))), *docs)
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in on.clusters[0].typed_extension_protocol_options
    opted_out = ingress("i", rule(["h.example.com"], path(split("g"))))
    opted_out["metadata"]["annotations"]["kourier.knative.dev/disable-http2"] = "true"
    assert not run(opted_out, *docs).clusters[0].typed_extension_protocol_options


def test_external_name_service_is_a_dns_cluster() -> None:
    config = run(ingress("i", rule(["h.example.com"], path(split("x", port=8081)))), service("x", port=8081, external_name="localhost"))
    cluster = config.clusters[0]
    assert cluster.type == cluster.LOGICAL_DNS
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("localhost", 8081)
    assert config.load_assignments == ()


def test_endpoints_ready_addresses_times_the_named_slice_port() -> None:
    config = run(
        ingress("i", rule(["h.example.com"], path(split("a")))),
        service("a", target="user-port"),
        endpoint_slice("a", ["10.0.0.2", "10.0.0.1"], 8012, name="a-1"),
        endpoint_slice("a", ["10.0.0.3"], 8012, name="a-2", ready=False),
        endpoint_slice("a", ["a.example.com"], 8012, name="a-3", address_type="FQDN"),
    )
    cla = config.load_assignments[0]
    got = [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value) for e in cla.endpoints[0].lb_endpoints]
    assert got == [("10.0.0.1", 8012), ("10.0.0.2", 8012)]
    assert config.clusters[0].type == config.clusters[0].EDS


def test_service_without_endpoints_is_programmed_with_an_empty_assignment() -> None:
    config = run(ingress("i", rule(["h.example.com"], path(split("a")))), service("a"))
    assert config.outcomes["ns/i"].programmed
    assert not config.load_assignments[0].endpoints[0].lb_endpoints


def test_empty_hosts_match_every_host() -> None:
    config = run(ingress("i", rule([], path(split("a")))), *backend("a", 8001))
    assert list(vhosts(config, "external_services")["*"].domains) == ["*", "*:*"]


def test_legacy_timeout_and_rewrite_host() -> None:
    doc = ingress("i", rule(["h.example.com"], path(split("a"))))
    doc["spec"]["rules"][0]["http"]["paths"][0].update(timeout="48h0m0s", rewriteHost="a.ns.svc.cluster.local")
    route = vhosts(run(doc, *backend("a", 8001)), "external_services")["h.example.com"].routes[-1].route
    assert route.timeout.seconds == 48 * 3600
    assert route.host_rewrite_literal == "a.ns.svc.cluster.local"


def test_status_vhost_routes_to_the_admin_cluster() -> None:
    status = vhosts(run(), "internal_services")["internalkourier"]
    assert status.routes[0].match.prefix == "/ready"
    assert status.routes[0].route.weighted_clusters.clusters[0].name == "service_stats"
    assert status.routes[0].route.timeout.seconds == 1


def test_listeners_are_kourier_shaped() -> None:
    config = run(gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, listen_address="127.0.0.1"))
    assert [(listener.name, listener.address.socket_address.address) for listener in config.listeners] == [
        ("listener_8080", "127.0.0.1"), ("listener_8081", "127.0.0.1"), ("listener_8090", "127.0.0.1"),
    ]


def test_output_is_deterministic_whatever_the_input_order() -> None:
    docs = [ingress(f"i{n}", rule([f"h{n}.example.com"], path(split(f"s{n}")))) for n in range(5)]
    docs += [d for n in range(5) for d in backend(f"s{n}", 8000 + n)]
    first, second = run(*docs), run(*reversed(docs))
    assert [r.SerializeToString(deterministic=True) for r in first.route_configs] == [
        r.SerializeToString(deterministic=True) for r in second.route_configs
    ]
    assert [c.name for c in first.clusters] == sorted(c.name for c in first.clusters)
