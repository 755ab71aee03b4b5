"""The delta stream state machine, scripted message by message (no sockets)."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from kxds.xds.delta import DeltaStream
from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.unit.test_stream import snapshot


def request(type_url: str, subscribe: list[str] | None = None, unsubscribe: list[str] | None = None, nonce: str = "",
            error: str = "", initial: dict[str, str] | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=subscribe or [], resource_names_unsubscribe=unsubscribe or [],
                                              response_nonce=nonce, initial_resource_versions=initial or {})
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def ack(response: discovery_pb2.DeltaDiscoveryResponse) -> discovery_pb2.DeltaDiscoveryRequest:
    return request(response.type_url, nonce=response.nonce)


def names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in response.resources]


def test_only_new_or_changed_resources_and_removals_are_sent() -> None:
    stream = DeltaStream(snapshot({"a": 1, "b": 2}, ["a"]))
    [first] = stream.on_delta_request(request(CLUSTER))
    assert names(first) == ["a", "b"] and not first.removed_resources
    assert stream.on_delta_request(ack(first)) == []
    [update] = stream.on_delta_snapshot(snapshot({"a": 1, "c": 3}, ["a"]))
    assert names(update) == ["c"] and list(update.removed_resources) == ["b"]
    assert update.resources[0].version == stream.snapshot.of_type(CLUSTER)["c"].version


def test_a_nack_is_never_resent_until_something_changes() -> None:
    stream = DeltaStream(snapshot({"a": 1}, ["a"]))
    [first] = stream.on_delta_request(request(CLUSTER))
    assert stream.on_delta_request(request(CLUSTER, nonce=first.nonce, error="bad")) == []
    assert stream.on_delta_snapshot(stream.snapshot) == []
    events = stream.take_events()
    assert any(type(e).__name__ == "Nacked" for e in events)
    [retry] = stream.on_delta_snapshot(snapshot({"a": 1, "b": 2}, ["a"]))
    assert names(retry) == ["a", "b"]  # what was never applied goes again with the change


def test_a_reconnect_with_initial_versions_is_sent_only_what_differs() -> None:
    current = snapshot({"a": 1, "b": 2}, ["a"])
    held = {"a": current.of_type(CLUSTER)["a"].version, "b": "stale-version", "gone": "v1"}
    stream = DeltaStream(current)
    [response] = stream.on_delta_request(request(CLUSTER, initial=held))
    assert names(response) == ["b"] and list(response.removed_resources) == ["gone"]
    up_to_date = DeltaStream(current)
    assert up_to_date.on_delta_request(request(CLUSTER, initial={n: r.version for n, r in current.of_type(CLUSTER).items()})) == []


def test_named_subscriptions_follow_subscribe_and_unsubscribe() -> None:
    stream = DeltaStream(snapshot({"a": 1, "b": 2}, ["a"]))
    [clusters] = stream.on_delta_request(request(CLUSTER))
    stream.on_delta_request(ack(clusters))
    [endpoints] = stream.on_delta_request(request(ENDPOINT, subscribe=["a", "missing"]))
    assert names(endpoints) == ["a"] and list(endpoints.removed_resources) == ["missing"]  # said once: it does not exist
    stream.on_delta_request(ack(endpoints))
    [more] = stream.on_delta_request(request(ENDPOINT, subscribe=["b"]))
    assert names(more) == ["b"]
    stream.on_delta_request(ack(more))
    assert stream.on_delta_request(request(ENDPOINT, unsubscribe=["a"])) == []
    [flip] = stream.on_delta_snapshot(snapshot({"a": 5, "b": 6}, ["a"]))
    assert flip.type_url == ENDPOINT and names(flip) == ["b"]  # "a" is no longer wanted


def test_routes_wait_for_their_clusters() -> None:
    stream = DeltaStream(snapshot({"a": 1}, ["a"]))
    assert stream.on_delta_request(request(ROUTE, subscribe=["r"])) == []  # cluster "a" not applied yet
    [clusters] = stream.on_delta_request(request(CLUSTER))
    stream.on_delta_request(ack(clusters))
    [endpoints] = stream.on_delta_request(request(ENDPOINT, subscribe=["a"]))
    responses = stream.on_delta_request(ack(endpoints))
    assert [(r.type_url, names(r)) for r in responses] == [(ROUTE, ["r"])]


def test_a_cold_gateway_is_sent_a_budget_at_a_time_and_ends_up_holding_everything() -> None:
    """At 10,000 Ingresses a cold gateway is owed ~50 MB of route configurations: one response
    would hold that three times over (message, encoding, gRPC's buffers). New resources go out a
    budget at a time, the next part once the gateway ACKs; a resource over the budget goes alone."""
    clusters = {f"c{n}": 8000 + n for n in range(7)}
    stream = DeltaStream(snapshot(clusters, ["c0"]), budget=1)  # one new resource per response
    sent: list[list[str]] = []
    [response] = stream.on_delta_request(request(CLUSTER))
    while True:
        assert len(response.resources) == 1
        sent.append(names(response))
        assert stream.synced_serial == -1
        more = stream.on_delta_request(ack(response))
        if not more:
            break
        [response] = more
    assert sent == [[name] for name in sorted(clusters)]
    assert stream.types[CLUSTER].acked_resources.keys() == clusters.keys()
    # The same stream with room for everything: one response.
    whole = DeltaStream(stream.snapshot, budget=sum(len(r.data) for r in stream.snapshot.of_type(CLUSTER).values()))
    [response] = whole.on_delta_request(request(CLUSTER))
    assert names(response) == sorted(clusters)


def test_a_budgeted_gateway_is_synced_only_once_it_holds_every_part() -> None:
    stream = DeltaStream(snapshot({"a": 1, "b": 2, "c": 3}, ["a", "b"]), budget=1)
    pending = [*stream.on_delta_request(request(CLUSTER)), *stream.on_delta_request(request(LISTENER)),
               *stream.on_delta_request(request(ENDPOINT, subscribe=["a", "b", "c"])), *stream.on_delta_request(request(ROUTE, subscribe=["r"]))]
    carried: dict[str, list[str]] = {}
    while pending:
        assert stream.synced_serial == -1, "synced before every part was applied"
        response = pending.pop(0)
        carried.setdefault(response.type_url, []).extend(names(response))
        pending += stream.on_delta_request(ack(response))
    assert carried == {CLUSTER: ["a", "b", "c"], LISTENER: ["listener"], ENDPOINT: ["a", "b", "c"], ROUTE: ["r"]}
    assert stream.synced_serial == stream.snapshot.serial


def test_subscribed_names_are_the_translators_own_strings() -> None:
    """A gateway subscribes to every cluster's endpoints and every route configuration (20,000 of
    each at 10,000 Ingresses): the stream keeps the translator's interned name, not a second copy."""
    from kxds.translate.names import cluster_name
    from kxds.translate.scopes import route_config_name

    name = cluster_name("ns", "hello")
    assert name is cluster_name("ns", "hello") and route_config_name("external_services", "ns/a") is route_config_name("external_services", "ns/a")
    stream = DeltaStream(snapshot({name: 1}, [name]))
    [clusters] = stream.on_delta_request(request(CLUSTER))
    stream.on_delta_request(ack(clusters))
    received = "".join(["ns/", "hello"])  # as parsed from a request: equal, another object
    assert received is not name
    stream.on_delta_request(request(ENDPOINT, subscribe=[received]))
    (held,) = stream.types[ENDPOINT].names
    assert held is name
