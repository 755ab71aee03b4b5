"""The streams' shortcuts (lineage, subscription logs, tallies) change nothing a gateway sees: a
stream that compares everything in full, fed the same snapshots and requests, sends the very same
responses and reaches the same synced serial after every message."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, refs
from kxds.xds.delta import DeltaStream
from kxds.xds.lineage import Lineage
from kxds.xds.snapshot import Resource, Snapshot
from kxds.xds.stream import RESPONSE_BUDGET, SotwStream

CLUSTERS = [f"c{n}" for n in range(4)]
SCOPES = [f"s{n}" for n in range(3)]
ROUTES = [f"r{n}" for n in range(4)]
NAMES = {CLUSTER: CLUSTERS, ENDPOINT: CLUSTERS, LISTENER: ["l0", "l1"], SCOPED_ROUTE: SCOPES, ROUTE: ROUTES}
TYPES = list(NAMES)


def resource(type_url: str, name: str, variant: int) -> Resource:
    """One resource; its variant picks its bytes and what it needs and asks for."""
    needs: set[tuple[str, str]] = set()
    asks: set[tuple[str, str]] = set()
    if type_url == CLUSTER:
        needs = asks = {(ENDPOINT, name)}
    elif type_url == LISTENER:
        asks = {(SCOPED_ROUTE, SCOPES[variant % 3]), (SCOPED_ROUTE, SCOPES[(variant + 1) % 3])}
        needs = {(CLUSTER, CLUSTERS[3])} if variant % 2 else set()  # a filter calling a cluster
    elif type_url == SCOPED_ROUTE:
        asks = {(ROUTE, ROUTES[variant % 4])}
    elif type_url == ROUTE:
        needs = {(CLUSTER, CLUSTERS[variant % 4]), (CLUSTER, CLUSTERS[(variant * 3) % 4])}
    return Resource(name=name, version=f"{name}-{variant}", type_url=type_url, data=f"{type_url}/{name}/{variant}".encode(),
                    needs=refs(needs), asks=refs(asks))


change = st.tuples(st.sampled_from(TYPES), st.integers(0, 3), st.one_of(st.none(), st.integers(0, 5)))
action = st.one_of(
    st.tuples(st.just("step"), st.lists(change, min_size=1, max_size=4)),
    st.tuples(st.just("rebuild"), st.lists(change, max_size=4)),  # a full translation: unrelated mappings
    st.tuples(st.just("ack"), st.sampled_from(TYPES)),
    st.tuples(st.just("ack-all")),  # as a healthy gateway does: every response ACKed, until none is left
    st.tuples(st.just("ack-all")),
    st.tuples(st.just("nack"), st.sampled_from(TYPES)),
    st.tuples(st.just("subscribe"), st.sampled_from([ENDPOINT, ROUTE]), st.lists(st.integers(0, 3), max_size=3),
              st.lists(st.integers(0, 3), max_size=2)),
)


class World:
    def __init__(self) -> None:
        self.serials = itertools.count(1)
        self.objects: dict[str, dict[str, Resource]] = {t: {n: resource(t, n, 0) for n in names} for t, names in NAMES.items()}
        self.snapshot = Snapshot.of(next(self.serials), {t: dict(r) for t, r in self.objects.items()})

    def apply(self, changes: list[tuple[str, int, int | None]], *, rebuild: bool) -> Snapshot:
        stepped: dict[str, dict[str, Resource | None]] = {}
        for type_url, index, variant in changes:
            name = NAMES[type_url][index % len(NAMES[type_url])]
            new = resource(type_url, name, variant) if variant is not None else None
            if new is None:
                self.objects[type_url].pop(name, None)
            else:
                self.objects[type_url][name] = new
            stepped.setdefault(type_url, {})[name] = new
        if rebuild:
            fresh = {t: {n: resource(t, n, int(r.version.rsplit("-", 1)[1])) for n, r in rs.items()} for t, rs in self.objects.items()}
            self.snapshot = Snapshot.of(next(self.serials), fresh, previous=self.snapshot)
        else:
            self.snapshot = self.snapshot.with_changes(next(self.serials), stepped)
        return self.snapshot


def wire(responses: list[Any]) -> list[bytes]:
    return [r.SerializeToString(deterministic=True) for r in responses]


def full(stream_type: type[SotwStream], snapshot: Snapshot, budget: int) -> SotwStream:
    """A stream that remembers no derivation: every comparison is a full one."""
    return stream_type(snapshot, _lineage=Lineage(capacity=0), budget=budget)


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
@settings(max_examples=250, deadline=None)
# The response budget as served, and small enough that new resources go out one or two at a time.
@given(actions=st.lists(action, min_size=1, max_size=40), budget=st.sampled_from([RESPONSE_BUDGET, 1, 150]))
def test_a_stream_sends_what_a_stream_comparing_in_full_sends(delta: bool, actions: list[tuple[Any, ...]], budget: int) -> None:
    world = World()
    kind = DeltaStream if delta else SotwStream
    streams: list[SotwStream] = [kind(world.snapshot, budget=budget), full(kind, world.snapshot, budget)]
    subscribed = {ENDPOINT: {"c0", "c1"}, ROUTE: {"r0"}}
    pending: dict[str, Any] = {}

    def feed(request: Any) -> None:
        outputs = [s.on_delta_request(request) if delta else s.on_request(request) for s in streams]  # type: ignore[attr-defined]
        settle(outputs)

    def settle(outputs: list[list[Any]]) -> None:
        assert wire(outputs[0]) == wire(outputs[1])
        assert streams[0].synced_serial == streams[1].synced_serial
        assert streams[0].take_events() == streams[1].take_events()
        for response in outputs[0]:
            pending[response.type_url] = response

    def sotw_request(type_url: str, nonce: str = "", version: str = "", error: str = "") -> discovery_pb2.DiscoveryRequest:
        names = sorted(subscribed.get(type_url, ()))
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version)
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        return request

    def delta_request(type_url: str, subscribe: Any = (), unsubscribe: Any = (), nonce: str = "", error: str = "") -> Any:
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=sorted(subscribe),
                                                      resource_names_unsubscribe=sorted(unsubscribe), response_nonce=nonce)
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        return request

    for type_url in TYPES:  # wildcard for CDS, LDS, SRDS; names for EDS and RDS
        feed(delta_request(type_url, subscribed.get(type_url, ())) if delta else sotw_request(type_url))
    for act in actions:
        match act:
            case ("step" | "rebuild") as kind, changes:
                snapshot = world.apply(changes, rebuild=kind == "rebuild")
                settle([s.on_delta_snapshot(snapshot) if delta else s.on_snapshot(snapshot) for s in streams])  # type: ignore[attr-defined]
            case ("ack" | "nack") as kind, type_url if type_url in pending:
                response = pending.pop(type_url)
                error = "rejected" if kind == "nack" else ""
                feed(delta_request(type_url, nonce=response.nonce, error=error) if delta
                     else sotw_request(type_url, nonce=response.nonce, version=response.version_info, error=error))
            case ("ack-all",):
                for _ in range(20):
                    if not pending:
                        break
                    response = pending.pop(sorted(pending)[0])
                    feed(delta_request(response.type_url, nonce=response.nonce) if delta
                         else sotw_request(response.type_url, nonce=response.nonce, version=response.version_info))
            case "subscribe", type_url, add, remove:
                added = {NAMES[type_url][i] for i in add}
                removed = {NAMES[type_url][i] for i in remove} - added
                subscribed[type_url] = (subscribed[type_url] | added) - removed
                if delta:
                    feed(delta_request(type_url, added, removed))  # a delta gateway changes its subscription at any time
                elif type_url not in pending:  # a SotW one repeats it on its next ACK
                    feed(sotw_request(type_url))
