"""The scoped route layout: one route configuration per Ingress and listener, scopes keyed by
(listener, host), and a stream that reports a gateway synced only once the route configurations its
new scopes name are applied."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from envoy.service.discovery.v3 import discovery_pb2

from kxds.settings import KOURIER_LAYOUT, SCOPED_LAYOUT, GatewaySettings
from kxds.translate import scopes
from kxds.translate.gateway import RECONCILE_FAILED, GatewayConfig, TranslationCache, translate
from kxds.xds import stream as xs
from kxds.xds.delta import DeltaStream
from kxds.engine.assemble import build_snapshot
from kxds.xds.snapshot import Snapshot
from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE
from tests.builders import backend, ingress, path, rule, split
from tests.unit.test_incremental import world
from tests.unit.test_stream import ack, request

SCOPED = GatewaySettings(route_layout=SCOPED_LAYOUT)


def docs(count: int = 2, marker: str = "0") -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        rules = [rule([f"h{n}.example.com"], path(split(f"s{n}", Marker=marker))),
                 rule([f"h{n}.ns", f"h{n}.ns.svc", f"h{n}.ns.svc.cluster.local"], path(split(f"s{n}")), visibility="ClusterLocal")]
        out.append(ingress(f"i{n}", *rules))
        out += backend(f"s{n}", 8000 + n)
    return out


def decoded_scopes(config: GatewayConfig) -> dict[str, scoped_route_pb2.ScopedRouteConfiguration]:
    return {e.name: scoped_route_pb2.ScopedRouteConfiguration.FromString(e.data) for e in config.encoded[SCOPED_ROUTE]}


def test_each_ingress_has_its_own_route_configurations_and_a_scope_per_listener_and_host() -> None:
    config = translate(world(docs()), SCOPED)
    routes = {r.name: r for r in config.route_configs}
    assert sorted(routes) == [
        "external_services/ns/i0", "external_services/ns/i1", "internal_services/internalkourier", "internal_services/ns/i0", "internal_services/ns/i1"
    ]
    assert [d for v in routes["external_services/ns/i0"].virtual_hosts for d in v.domains] == ["h0.example.com", "h0.example.com:*"]
    # The private listener serves every rule of the Ingress; the public one its ExternalIP rules.
    assert {d for v in routes["internal_services/ns/i0"].virtual_hosts for d in v.domains if not d.endswith(":*")} == {
        "h0.example.com", "h0.ns", "h0.ns.svc", "h0.ns.svc.cluster.local"
    }
    assert routes["external_services/ns/i0"].request_headers_to_remove == [scopes.LISTENER_HEADER, scopes.HOST_HEADER]
    assert routes["external_services/ns/i0"].validate_clusters.value
    found = {name: ([f.string_key for f in s.key.fragments], s.route_configuration_name) for name, s in decoded_scopes(config).items()}
    assert found["external_services/h0.example.com"] == (["external_services", "h0.example.com"], "external_services/ns/i0")
    assert found["internal_services/h1.ns.svc"] == (["internal_services", "h1.ns.svc"], "internal_services/ns/i1")
    assert found["internal_services/internalkourier"] == (["internal_services", "internalkourier"], "internal_services/internalkourier")
    assert len(found) == 2 * 5 + 1
    # Each route configuration waits only for the clusters of its own Ingress.
    assert config.route_clusters["external_services/ns/i1"] == {"ns/s1"}
    assert config.route_clusters["internal_services/internalkourier"] == frozenset()


def test_plain_listeners_route_by_scope_and_mark_their_requests_first() -> None:
    config = translate(world(docs()), SCOPED)
    for listener in config.listeners[:3]:
        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        assert manager.WhichOneof("route_specifier") == "scoped_routes"
        table = manager.scoped_routes.name
        fragments = manager.scoped_routes.scope_key_builder.fragments
        assert [f.header_value_extractor.name for f in fragments] == [scopes.LISTENER_HEADER, scopes.HOST_HEADER]
        # The host fragment is written by the first HTTP filter: lower-cased, without the port.
        first = manager.http_filters[0]
        lua = lua_pb2.Lua()
        first.typed_config.Unpack(lua)
        assert first.name == scopes.LUA_FILTER and f'replace("{scopes.HOST_HEADER}", string.lower(host))' in lua.default_source_code.inline_string
        assert manager.http_filters[-1].name == "envoy.filters.http.router"
        (mark,) = manager.early_header_mutation_extensions
        mutation = header_mutation_pb2.HeaderMutation()
        mark.typed_config.Unpack(mutation)
        (header,) = mutation.mutations
        assert (header.append.header.key, header.append.header.value) == (scopes.LISTENER_HEADER, table)
        assert header.append.append_action == header.append.OVERWRITE_IF_EXISTS_OR_ADD  # a client cannot pick a scope
    assert [lis.name for lis in config.listeners[:3]] == ["listener_8080", "listener_8081", "listener_8090"]


def test_an_ingress_change_changes_only_its_own_route_configuration() -> None:
    cache = TranslationCache()
    before = {e.name: e.version for t, es in translate(world(docs(count=3)), SCOPED, cache).encoded.items() if t in (ROUTE, SCOPED_ROUTE) for e in es}
    changed = docs(count=3)
    changed[3 * 0] = docs(count=1, marker="1")[0]  # i0's ExternalIP split appends another header value
    after = {e.name: e.version for t, es in translate(world(changed), SCOPED, cache).encoded.items() if t in (ROUTE, SCOPED_ROUTE) for e in es}
    assert before.keys() == after.keys()
    assert {n for n in after if after[n] != before[n]} == {"external_services/ns/i0", "internal_services/ns/i0"}


def test_a_wildcard_host_or_a_rule_without_hosts_cannot_be_scoped_and_says_which() -> None:
    objects = [*docs(count=1), ingress("wild", rule(["a.example.com"], path(split("s0"))), rule(["b.example.com", "*.example.com"], path(split("s0")))),
               ingress("every", rule([], path(split("s0"))))]
    config = translate(world(objects), SCOPED)
    outcome = config.outcomes["ns/wild"]
    assert (outcome.programmed, outcome.reason) == (False, RECONCILE_FAILED)
    assert outcome.message.startswith("spec.rules[1].hosts[1]: '*.example.com': the scoped route layout (the default) routes exact hosts only")
    assert "--route-layout=kourier" in outcome.message
    assert config.outcomes["ns/every"].message.startswith("spec.rules[0].hosts: empty (every host)")
    assert config.outcomes["ns/i0"].programmed


def test_the_scoped_layout_is_the_default_and_the_kourier_layout_is_kouriers() -> None:
    assert GatewaySettings().route_layout == SCOPED_LAYOUT
    config = translate(world(docs()), GatewaySettings(route_layout=KOURIER_LAYOUT))
    assert SCOPED_ROUTE not in config.encoded
    assert sorted(r.name for r in config.route_configs) == ["external_services", "internal_services"]


# -- the stream: scopes first, then the route configurations they name --------------------


def snap(count: int) -> Snapshot:
    return build_snapshot(translate(world(docs(count)), SCOPED), count)


def route_names(snapshot: Snapshot) -> list[str]:
    return sorted(snapshot.of_type(ROUTE))


def test_sotw_synced_only_once_the_new_scopes_route_configurations_are_applied() -> None:
    first = snap(1)
    stream = xs.SotwStream(first)
    (cds,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(cds))
    (eds,) = stream.on_request(request(ENDPOINT, ["ns/s0"]))
    stream.on_request(ack(eds, ["ns/s0"]))
    (lds,) = stream.on_request(request(LISTENER))
    (srds,) = stream.on_request(request(SCOPED_ROUTE))
    (rds,) = stream.on_request(request(ROUTE, route_names(first)))
    for response, names in ((lds, None), (srds, None), (rds, route_names(first))):
        stream.on_request(ack(response, names))
    assert stream.synced_serial == first.serial

    second = snap(2)  # a new Ingress: new cluster, new scopes, new route configurations
    cds2, srds2 = stream.on_snapshot(second)
    assert (cds2.type_url, srds2.type_url) == (CLUSTER, SCOPED_ROUTE)
    stream.on_request(ack(cds2))
    (eds2,) = stream.on_request(request(ENDPOINT, ["ns/s0", "ns/s1"]))
    assert stream.on_request(ack(eds2, ["ns/s0", "ns/s1"])) == []
    assert stream.synced_serial == first.serial
    # Envoy asks for the new scopes' route configurations before it ACKs the scopes.
    (rds2,) = stream.on_request(request(ROUTE, route_names(second), nonce=rds.nonce, version=rds.version_info))
    assert stream.on_request(ack(srds2)) == []
    assert stream.synced_serial == first.serial  # the new route configurations are not applied yet
    stream.on_request(ack(rds2, route_names(second)))
    assert stream.synced_serial == second.serial


def test_a_route_configuration_no_longer_asked_for_releases_its_clusters() -> None:
    second = snap(2)
    stream = xs.SotwStream(second)
    (cds,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(cds))
    (eds,) = stream.on_request(request(ENDPOINT, ["ns/s0", "ns/s1"]))
    stream.on_request(ack(eds, ["ns/s0", "ns/s1"]))
    (lds,) = stream.on_request(request(LISTENER))
    (srds,) = stream.on_request(request(SCOPED_ROUTE))
    (rds,) = stream.on_request(request(ROUTE, route_names(second)))
    for response, names in ((lds, None), (srds, None), (rds, route_names(second))):
        stream.on_request(ack(response, names))
    first = snap(1)  # i1 deleted
    (srds1,) = stream.on_snapshot(first)  # ns/s1 stays in CDS while the gateway holds i1's routes
    assert srds1.type_url == SCOPED_ROUTE
    # The gateway drops the removed scopes' route configurations: their cluster goes.
    (cds1,) = stream.on_request(request(ROUTE, route_names(first), nonce=rds.nonce, version=rds.version_info))
    assert cds1.type_url == CLUSTER and len(cds1.resources) == len(first.of_type(CLUSTER)) == len(second.of_type(CLUSTER)) - 1


def test_delta_synced_only_once_the_new_scopes_route_configurations_are_applied() -> None:
    def delta(type_url: str, subscribe: list[str] | None = None, nonce: str = "") -> discovery_pb2.DeltaDiscoveryRequest:
        return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=subscribe or [], response_nonce=nonce)

    first = snap(1)
    stream = DeltaStream(first)
    (cds,) = stream.on_delta_request(delta(CLUSTER))
    stream.on_delta_request(delta(CLUSTER, nonce=cds.nonce))
    (eds,) = stream.on_delta_request(delta(ENDPOINT, ["ns/s0"]))
    stream.on_delta_request(delta(ENDPOINT, nonce=eds.nonce))
    (lds,) = stream.on_delta_request(delta(LISTENER))
    (srds,) = stream.on_delta_request(delta(SCOPED_ROUTE))
    (rds,) = stream.on_delta_request(delta(ROUTE, route_names(first)))
    for response in (lds, srds, rds):
        stream.on_delta_request(delta(response.type_url, nonce=response.nonce))
    assert stream.synced_serial == first.serial

    second = snap(2)
    cds2, srds2 = stream.on_delta_snapshot(second)
    stream.on_delta_request(delta(CLUSTER, nonce=cds2.nonce))
    (eds2,) = stream.on_delta_request(delta(ENDPOINT, ["ns/s1"]))
    assert stream.on_delta_request(delta(ENDPOINT, nonce=eds2.nonce)) == []
    assert [r.name for r in srds2.resources] == sorted(set(second.of_type(SCOPED_ROUTE)) - set(first.of_type(SCOPED_ROUTE)))
    new_routes = sorted(set(route_names(second)) - set(route_names(first)))
    (rds2,) = stream.on_delta_request(delta(ROUTE, new_routes))
    assert [r.name for r in rds2.resources] == new_routes
    assert stream.on_delta_request(delta(SCOPED_ROUTE, nonce=srds2.nonce)) == []
    assert stream.synced_serial == first.serial
    stream.on_delta_request(delta(ROUTE, nonce=rds2.nonce))
    assert stream.synced_serial == second.serial
    assert route_pb2.RouteConfiguration.FromString(rds2.resources[0].resource.value).name == new_routes[0]


def test_delta_gateway_acking_scopes_before_asking_for_their_routes_is_not_synced() -> None:
    """Envoy's delta client sends queued ACKs before new subscriptions: the names a parent
    resource makes it ask for count, not only the names asked so far."""
    def delta(type_url: str, subscribe: list[str] | None = None, nonce: str = "") -> discovery_pb2.DeltaDiscoveryRequest:
        return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=subscribe or [], response_nonce=nonce)

    first = snap(1)
    stream = DeltaStream(first)
    for type_url, names in ((CLUSTER, None), (ENDPOINT, ["ns/s0"]), (LISTENER, None), (SCOPED_ROUTE, None), (ROUTE, route_names(first))):
        (response,) = stream.on_delta_request(delta(type_url, names))
        stream.on_delta_request(delta(type_url, nonce=response.nonce))
    assert stream.synced_serial == first.serial
    second = snap(2)
    cds, srds = stream.on_delta_snapshot(second)
    stream.on_delta_request(delta(CLUSTER, nonce=cds.nonce))
    stream.on_delta_request(delta(SCOPED_ROUTE, nonce=srds.nonce))  # ACKs first...
    assert stream.synced_serial == first.serial  # ...the new cluster's endpoints and scopes' routes not yet asked for
    (eds,) = stream.on_delta_request(delta(ENDPOINT, ["ns/s1"]))
    stream.on_delta_request(delta(ENDPOINT, nonce=eds.nonce))
    assert stream.synced_serial == first.serial
    new_routes = sorted(set(route_names(second)) - set(route_names(first)))
    (rds,) = stream.on_delta_request(delta(ROUTE, new_routes))
    assert stream.synced_serial == first.serial
    stream.on_delta_request(delta(ROUTE, nonce=rds.nonce))
    assert stream.synced_serial == second.serial
