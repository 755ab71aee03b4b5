"""The SotW stream state machine, scripted message by message (no sockets)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from kxds.translate.clusters import ads_source
from kxds.translate.encoded import encode
from kxds.translate.gateway import GatewayConfig
from kxds.xds import stream as xs
from kxds.xds.lineage import Lineage, Resources, Tally
from kxds.engine.assemble import build_snapshot
from kxds.xds.snapshot import Snapshot
from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

SERIAL = iter(range(1, 1000))


def snapshot(clusters: dict[str, int], routes_to: list[str], listener_port: int = 8080) -> Snapshot:
    """Clusters name → endpoint port (EDS); one route configuration `r` splitting to `routes_to`."""
    cds = []
    for name, port in clusters.items():
        c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        c.eds_cluster_config.eds_config.CopyFrom(ads_source())
        cds.append(c)
    eds = []
    for name, port in clusters.items():
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        eds.append(cla)
    weighted = route_components_pb2.WeightedCluster(clusters=[route_components_pb2.WeightedCluster.ClusterWeight(name=n) for n in routes_to])
    vhost = route_components_pb2.VirtualHost(name="v", domains=["*"], routes=[route_components_pb2.Route(route=route_components_pb2.RouteAction(weighted_clusters=weighted))])
    listener = listener_pb2.Listener(name="listener", address={"socket_address": {"port_value": listener_port}})
    config = GatewayConfig(
        route_clusters={"r": frozenset(routes_to)},
        cluster_needs={name: ((ENDPOINT, name),) for name in clusters},
        encoded={
            CLUSTER: tuple(encode(c.name, c) for c in cds),
            ENDPOINT: tuple(encode(a.cluster_name, a) for a in eds),
            LISTENER: (encode("listener", listener),),
            ROUTE: (encode("r", route_pb2.RouteConfiguration(name="r", virtual_hosts=[vhost])),),
        },
    )
    return build_snapshot(config, next(SERIAL))


def request(type_url: str, names: list[str] | None = None, nonce: str = "", version: str = "", error: str = "") -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names or [], response_nonce=nonce, version_info=version)
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def ack(resp: discovery_pb2.DiscoveryResponse, names: list[str] | None = None) -> discovery_pb2.DiscoveryRequest:
    return request(resp.type_url, names, nonce=resp.nonce, version=resp.version_info)


def names_in(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for body in resp.resources:
        msg = {CLUSTER: cluster_pb2.Cluster, ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
               LISTENER: listener_pb2.Listener, ROUTE: route_pb2.RouteConfiguration}[resp.type_url]()
        body.Unpack(msg)
        out.append(getattr(msg, "name", "") or getattr(msg, "cluster_name", ""))
    return out


def converge(stream: xs.SotwStream) -> None:
    """Drive a fresh stream through Envoy's start-up: CDS, EDS, LDS, RDS, each ACKed."""
    (cds,) = stream.on_request(request(CLUSTER))
    assert stream.on_request(ack(cds)) == []
    eds_names = names_in(cds)
    if eds_names:
        (eds,) = stream.on_request(request(ENDPOINT, eds_names))
        assert stream.on_request(ack(eds, eds_names)) == []
    (lds,) = stream.on_request(request(LISTENER))
    stream.on_request(ack(lds))
    (rds,) = stream.on_request(request(ROUTE, ["r"]))
    stream.on_request(ack(rds, ["r"]))
    stream.take_events()


def test_initial_request_gets_everything_with_a_content_version() -> None:
    snap = snapshot({"a": 1, "b": 2}, ["a"])
    stream = xs.SotwStream(snap)
    (resp,) = stream.on_request(request(CLUSTER))
    assert names_in(resp) == ["a", "b"]
    assert resp.nonce == "1" and resp.type_url == CLUSTER
    # Same content, another stream (another replica): the same version.
    (again,) = xs.SotwStream(snapshot({"a": 1, "b": 2}, ["a"])).on_request(request(CLUSTER))
    assert again.version_info == resp.version_info
    assert stream.take_events() == [xs.Sent(CLUSTER, resp.version_info, "1", 2)]


def test_node_is_remembered_from_the_first_request() -> None:
    stream = xs.SotwStream(snapshot({}, []))
    first = request(CLUSTER)
    first.node.id = "gw-1"
    (resp,) = stream.on_request(first)
    stream.on_request(ack(resp))
    assert stream.node is not None and stream.node.id == "gw-1"


def test_ack_then_nothing_is_resent_when_nothing_changed() -> None:
    snap = snapshot({"a": 1}, ["a"])
    stream = xs.SotwStream(snap)
    converge(stream)
    assert stream.synced_serial == snap.serial
    same = snapshot({"a": 1}, ["a"])
    assert stream.on_snapshot(same) == []
    assert stream.synced_serial == same.serial  # in sync without a single message


def test_nack_holds_and_is_never_resent() -> None:
    stream = xs.SotwStream(snapshot({"a": 1}, ["a"]))
    converge(stream)
    bad = snapshot({"a": 1}, ["a"], listener_port=1)
    (lds,) = stream.on_snapshot(bad)
    assert stream.on_request(request(LISTENER, nonce=lds.nonce, version="old", error="invalid port")) == []
    (event,) = [e for e in stream.take_events() if isinstance(e, xs.Nacked)]
    assert event == xs.Nacked(LISTENER, lds.version_info, "invalid port", ("listener",), bad.serial)  # the snapshot it came from
    # The same rejected content again (another rebuild, a subscription echo): held.
    assert stream.on_snapshot(snapshot({"a": 1}, ["a"], listener_port=1)) == []
    assert stream.on_request(request(LISTENER, nonce=lds.nonce)) == []
    assert stream.synced_serial < bad.serial
    # New content goes out.
    (fixed,) = stream.on_snapshot(snapshot({"a": 1}, ["a"], listener_port=2))
    assert fixed.type_url == LISTENER and fixed.version_info != lds.version_info


def test_stale_nonce_is_ignored() -> None:
    stream = xs.SotwStream(snapshot({"a": 1}, ["a"]))
    converge(stream)
    (eds,) = stream.on_snapshot(snapshot({"a": 2}, ["a"]))
    # A request written before the client saw `eds`: its nonce is stale.
    assert stream.on_request(request(ENDPOINT, ["a", "zzz"], nonce=str(int(eds.nonce) - 1))) == []
    assert stream.take_events() == [xs.Sent(ENDPOINT, eds.version_info, eds.nonce, 1), xs.StaleNonce(ENDPOINT, str(int(eds.nonce) - 1))]
    assert stream.types[ENDPOINT].names == frozenset({"a"})  # subscription untouched
    assert stream.on_request(ack(eds, ["a"])) == []


def test_only_one_unacknowledged_response_per_type() -> None:
    stream = xs.SotwStream(snapshot({"a": 1}, ["a"]))
    converge(stream)
    (first,) = stream.on_snapshot(snapshot({"a": 2}, ["a"]))
    assert stream.on_snapshot(snapshot({"a": 3}, ["a"])) == []  # waits for the ACK
    (latest,) = stream.on_request(ack(first, ["a"]))
    assert names_in(latest) == ["a"] and latest.version_info != first.version_info


def test_reconnect_with_a_known_version_is_not_resent() -> None:
    snap = snapshot({"a": 1}, ["a"])
    old = xs.SotwStream(snap)
    converge(old)
    cds_version = old.types[CLUSTER].acked.version  # type: ignore[union-attr]
    lds_version = old.types[LISTENER].acked.version  # type: ignore[union-attr]
    stream = xs.SotwStream(snap)
    assert stream.on_request(request(CLUSTER, version=cds_version)) == []
    assert stream.on_request(request(LISTENER, version=lds_version)) == []
    # Named types are always answered on a new stream: the server cannot know the names are old.
    (eds,) = stream.on_request(request(ENDPOINT, ["a"], version="whatever"))
    assert names_in(eds) == ["a"]
    # A version the server does not recognise is answered.
    assert len(xs.SotwStream(snap).on_request(request(CLUSTER, version="other"))) == 1


def test_two_types_interleaved() -> None:
    stream = xs.SotwStream(snapshot({"a": 1}, ["a"]))
    (cds,) = stream.on_request(request(CLUSTER))
    (lds,) = stream.on_request(request(LISTENER))
    assert (cds.type_url, lds.type_url) == (CLUSTER, LISTENER) and cds.nonce != lds.nonce
    assert stream.on_request(ack(lds)) == []
    (eds,) = stream.on_request(request(ENDPOINT, ["a"]))
    assert stream.on_request(ack(cds)) == []
    assert stream.on_request(ack(eds, ["a"])) == []
    acks = [e for e in stream.take_events() if isinstance(e, xs.Acked)]
    assert [e.type_url for e in acks] == [LISTENER, CLUSTER, ENDPOINT]


def test_make_before_break_when_a_route_moves_to_a_new_cluster() -> None:
    stream = xs.SotwStream(snapshot({"old": 1}, ["old"]))
    converge(stream)
    moved = snapshot({"new": 2}, ["new"])
    # 1. CDS gets the new cluster while keeping the old one: the gateway's routes still use it.
    (cds,) = stream.on_snapshot(moved)
    assert cds.type_url == CLUSTER and names_in(cds) == ["new", "old"]
    # 2. No route to `new` before its cluster is ACKed and its endpoints are in.
    assert stream.on_request(ack(cds)) == []
    (eds,) = stream.on_request(request(ENDPOINT, ["new", "old"], nonce=stream.types[ENDPOINT].last_nonce))
    assert names_in(eds) == ["new"]
    # 3. Endpoints ACKed: now the routes move.
    (rds,) = stream.on_request(ack(eds, ["new", "old"]))
    assert rds.type_url == ROUTE
    assert stream.synced_serial < moved.serial
    # 4. Routes ACKed: only now the old cluster leaves CDS.
    (cleanup,) = stream.on_request(ack(rds, ["r"]))
    assert cleanup.type_url == CLUSTER and names_in(cleanup) == ["new"]
    assert stream.synced_serial == moved.serial  # the whole snapshot is applied once routes moved
    stream.on_request(ack(cleanup))
    assert stream.synced_serial == moved.serial


def test_rejected_clusters_keep_routes_back() -> None:
    stream = xs.SotwStream(snapshot({"old": 1}, ["old"]))
    converge(stream)
    held = stream.types[ROUTE].acked
    (cds,) = stream.on_snapshot(snapshot({"new": 2}, ["new"]))
    assert stream.on_request(request(CLUSTER, nonce=cds.nonce, error="bad cluster")) == []
    # The routes that name the rejected cluster are never sent; the gateway keeps the old ones.
    assert stream.types[ROUTE].pending is None and stream.types[ROUTE].acked is held


def test_modified_eds_cluster_gets_a_fresh_assignment() -> None:
    stream = xs.SotwStream(snapshot({"a": 1}, ["a"]))
    converge(stream)
    changed = snapshot({"a": 1}, ["a"])
    # Change the cluster definition (not its endpoints): Envoy warms the new one on a fresh EDS.
    resources = {t: dict(r) for t, r in changed.resources.items()}
    c = cluster_pb2.Cluster(name="a", type=cluster_pb2.Cluster.EDS, connect_timeout={"seconds": 9})
    c.eds_cluster_config.eds_config.CopyFrom(ads_source())
    resources[CLUSTER]["a"] = xs.Resource.of("a", c, needs=[(ENDPOINT, "a")])
    (cds,) = stream.on_snapshot(Snapshot(serial=changed.serial, resources=resources))
    (eds,) = stream.on_request(ack(cds))
    assert eds.type_url == ENDPOINT and names_in(eds) == ["a"]


def test_subscription_to_a_missing_name_is_answered_when_it_appears() -> None:
    stream = xs.SotwStream(snapshot({}, []))
    (cds,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(cds))
    assert stream.on_request(request(ENDPOINT, ["later"])) == []
    cds2, eds = stream.on_snapshot(snapshot({"later": 5}, []))
    assert (cds2.type_url, eds.type_url) == (CLUSTER, ENDPOINT)  # in ADS order, one batch
    assert names_in(eds) == ["later"]


def test_legacy_and_explicit_wildcard() -> None:
    snap = snapshot({"a": 1, "b": 2}, [])
    assert names_in(xs.SotwStream(snap).on_request(request(CLUSTER, []))[0]) == ["a", "b"]
    assert names_in(xs.SotwStream(snap).on_request(request(CLUSTER, ["*"]))[0]) == ["a", "b"]
    stream = xs.SotwStream(snap)
    (resp,) = stream.on_request(request(CLUSTER, ["a"]))
    assert names_in(resp) == ["a"]
    # Once names were given, an empty list means "none" rather than "all".
    (none,) = stream.on_request(request(CLUSTER, [], nonce=resp.nonce))
    assert names_in(none) == []


def test_readiness_advances_under_churn_faster_than_acks() -> None:
    stream = xs.SotwStream(snapshot({"a": 1}, ["a"]))
    converge(stream)
    second = snapshot({"a": 2}, ["a"])
    (eds,) = stream.on_snapshot(second)
    third = snapshot({"a": 3}, ["a"])
    assert stream.on_snapshot(third) == []  # waits for the ACK of `second`
    (eds3,) = stream.on_request(ack(eds, ["a"]))
    # The gateway applied `second` in full although `third` already exists.
    assert stream.synced_serial == second.serial
    stream.on_request(ack(eds3, ["a"]))
    assert stream.synced_serial == third.serial


def test_routes_wait_for_the_secrets_their_clusters_need() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    from kxds.resources import SECRET

    base = snapshot({"a": 1}, ["a"])
    stream = xs.SotwStream(base)
    converge(stream)
    resources = {t: dict(r) for t, r in snapshot({"a": 1, "tls": 2}, ["tls"]).resources.items()}
    c = cluster_pb2.Cluster(name="tls", type=cluster_pb2.Cluster.EDS)
    resources[CLUSTER]["tls"] = xs.Resource.of("tls", c, needs=[(ENDPOINT, "tls"), (SECRET, "ca")])
    resources[SECRET] = {"ca": xs.Resource.of("ca", secret_pb2.Secret(name="ca"))}
    (cds,) = stream.on_snapshot(Snapshot(serial=base.serial + 100, resources=resources))
    stream.on_request(ack(cds))
    (eds,) = stream.on_request(request(ENDPOINT, ["a", "tls"], nonce=stream.types[ENDPOINT].last_nonce))
    assert stream.on_request(ack(eds, ["a", "tls"])) == []  # the CA is not there yet: routes hold
    (sds,) = stream.on_request(request(SECRET, ["ca"]))
    (rds,) = stream.on_request(ack(sds, ["ca"]))
    assert rds.type_url == ROUTE


def test_eds_and_rds_responses_carry_only_what_changed() -> None:
    stream = xs.SotwStream(snapshot({"a": 1, "b": 2, "c": 3}, ["a"]))
    converge(stream)
    (eds,) = stream.on_snapshot(snapshot({"a": 1, "b": 20, "c": 3}, ["a"]))
    assert names_in(eds) == ["b"]
    stream.on_request(ack(eds, ["a", "b", "c"]))
    # The gateway holds all three at their current versions: nothing more to send, and in sync.
    assert stream.types[ENDPOINT].acked is not None and set(stream.types[ENDPOINT].acked.resources) == {"a", "b", "c"}
    assert stream.synced_serial == stream.snapshot.serial


def test_a_name_dropped_and_asked_for_again_is_sent_again() -> None:
    """A cluster removed and re-added with the same endpoints: Envoy drops the assignment with the
    cluster and needs it again for the new one, although its content never changed."""
    stream = xs.SotwStream(snapshot({"a": 1, "b": 2}, ["a", "b"]))
    converge(stream)
    eds = stream.types[ENDPOINT]
    nonce = eds.last_nonce
    assert stream.on_request(request(ENDPOINT, ["a"], nonce=nonce)) == []  # b's cluster went away
    (again,) = stream.on_request(request(ENDPOINT, ["a", "b"], nonce=nonce))
    assert names_in(again) == ["b"]


def test_a_patched_snapshot_knows_what_changed_since_the_mapping_it_patched() -> None:
    first = snapshot({"a": 1, "b": 2}, ["a", "b"])
    held = first.of_type(ENDPOINT)
    moved = endpoint_pb2.ClusterLoadAssignment(cluster_name="b")
    moved.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = 3
    second = first.with_changes(first.serial + 1, {ENDPOINT: {"b": xs.Resource.encoded(ENDPOINT, encode("b", moved), held["b"].needs)}})
    assert second.changed_since(ENDPOINT, held) == {"b"}
    assert second.changed_since(ENDPOINT, {**held}) is None  # another mapping: unknown, compare all
    assert second.changed_since(CLUSTER, first.of_type(CLUSTER)) is None
    stream = xs.SotwStream(first)
    converge(stream)
    (eds,) = stream.on_snapshot(second)
    assert names_in(eds) == ["b"]


class _CountingLineage(Lineage):
    """The stream's own lineage, counting the tallies it had to count afresh over every resource."""

    def __init__(self) -> None:
        super().__init__()
        self.recounts: list[str] = []

    def follow(self, tally: Tally, resources: Resources) -> frozenset[str] | None:
        moved = super().follow(tally, resources)
        if moved is None and resources:
            self.recounts.append(tally.relation)
        return moved


def test_a_cluster_leaving_long_after_sync_is_decided_without_recounting_the_routes() -> None:
    """What routes need is counted once, at the gateway's first sync, and kept up with: not counted
    over every route configuration when a cluster first leaves, many changes later."""
    first = snapshot({"old": 1}, ["old"])
    lineage = _CountingLineage()
    stream = xs.SotwStream(first, _lineage=lineage)
    converge(stream)
    counted_at_sync = len(lineage.recounts)
    assert counted_at_sync  # at the first sync, what it applied was counted in full
    current = first
    for port in range(2, 2 + 3 * lineage.capacity):  # far more endpoint flips than the lineage remembers
        moved = endpoint_pb2.ClusterLoadAssignment(cluster_name="old")
        moved.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        current = current.with_changes(current.serial + 1, {ENDPOINT: {"old": xs.Resource.encoded(ENDPOINT, encode("old", moved))}})
        (eds,) = stream.on_snapshot(current)
        stream.on_request(ack(eds, ["old"]))
    # The route moves to a new cluster, and the old one leaves once the routes stop naming it.
    new = cluster_pb2.Cluster(name="new", type=cluster_pb2.Cluster.EDS)
    new.eds_cluster_config.eds_config.CopyFrom(ads_source())
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name="new")
    assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = 9
    weighted = route_components_pb2.WeightedCluster(clusters=[route_components_pb2.WeightedCluster.ClusterWeight(name="new")])
    vhost = route_components_pb2.VirtualHost(name="v", domains=["*"], routes=[route_components_pb2.Route(route=route_components_pb2.RouteAction(weighted_clusters=weighted))])
    moved_routes = current.with_changes(current.serial + 1, {
        CLUSTER: {"new": xs.Resource.encoded(CLUSTER, encode("new", new), [(ENDPOINT, "new")]), "old": None},
        ENDPOINT: {"new": xs.Resource.encoded(ENDPOINT, encode("new", assignment)), "old": None},
        ROUTE: {"r": xs.Resource.encoded(ROUTE, encode("r", route_pb2.RouteConfiguration(name="r", virtual_hosts=[vhost])), [(CLUSTER, "new")])},
    })
    (cds,) = stream.on_snapshot(moved_routes)
    assert names_in(cds) == ["new", "old"]  # kept: the routes the gateway holds still name it
    stream.on_request(ack(cds))
    (eds,) = stream.on_request(request(ENDPOINT, ["new", "old"], nonce=stream.types[ENDPOINT].last_nonce))
    (rds,) = stream.on_request(ack(eds, ["new", "old"]))
    (cleanup,) = stream.on_request(ack(rds, ["r"]))
    assert names_in(cleanup) == ["new"]
    assert lineage.recounts[counted_at_sync:] == []
