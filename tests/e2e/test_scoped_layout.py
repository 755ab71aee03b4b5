"""The scoped route layout (the default) with a real Envoy: hosts reach their Ingress's own route
configuration on the right listener only, whatever their case, a client cannot pick another
listener's or host's scope, and an Ingress change re-sends that Ingress's route configurations and
nothing else. (The conformance suite runs on every layout and protocol: scripts/test.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, curl, wait_until
from kxds.translate.scopes import HOST_HEADER, LISTENER_HEADER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("scoped"))
    try:
        yield stack
    finally:
        stack.close()


def app(name: str, marker: str = "0") -> dict[str, object]:
    return ingress(
        name,
        rule([f"{name}.example.com"], path(split(name, Marker=marker))),
        rule([f"{name}.ns", f"{name}.ns.svc", f"{name}.ns.svc.cluster.local"], path(split(name)), visibility="ClusterLocal"),
    )


def rds_pushes(stack: Stack) -> list[dict[str, object]]:
    lines = stack.plane.log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e["event"] == "xds.push" and e["type"] == "RDS"]


def test_hosts_reach_their_ingress_on_their_listeners_only(scoped: Stack) -> None:
    plane, ports = scoped.plane, scoped.ports
    port = scoped.backends.start("scoped-a")
    plane.write("a.yaml", [service("a", target=port), endpoint_slice("a", [LOCAL], port), app("a")])
    plane.wait_ready("ns/a")
    public = curl(ports.external, "a.example.com")
    assert public.status == 200 and public.request_header("Marker") == "0"
    assert public.request_header(LISTENER_HEADER) is None  # the scope mark never goes upstream
    # The port of the authority takes no part in the scope key (gRPC clients send it).
    assert curl(ports.external, "a.example.com", headers=("Host: a.example.com:8080",)).status == 200
    assert curl(ports.probe, "a.example.com").status == 200
    for host in ("a.ns", "a.ns.svc", "a.ns.svc.cluster.local", "a.example.com"):
        assert curl(ports.internal, host).status == 200, host
    # A cluster-local host is not public, whatever scope a client claims.
    for claimed in ((), (f"{LISTENER_HEADER}: internal_services",)):
        assert curl(ports.external, "a.ns.svc.cluster.local", headers=claimed).status == 404
    assert curl(ports.external, "unknown.example.com").status == 404
    # Hosts match whatever their case (RFC 9110), as vhost domains do in Kourier's layout.
    for host in ("A.Example.com", "A.EXAMPLE.COM:8080"):
        assert curl(ports.external, "a.example.com", headers=(f"Host: {host}",)).status == 200, host
    assert curl(ports.internal, "a.ns", headers=("Host: A.NS.Svc.Cluster.Local",)).status == 200
    assert public.request_header(HOST_HEADER) is None  # the folded host never goes upstream either
    # A client cannot name another host's scope: the filter overwrites whatever it sent.
    assert curl(ports.external, "unknown.example.com", headers=(f"{HOST_HEADER}: a.example.com",)).status == 404
    # The gateway's own readiness route lives in its own scope on the internal listener.
    assert curl(ports.internal, "internalkourier", path="/ready").status == 200


def test_an_ingress_change_resends_only_its_own_route_configurations(scoped: Stack) -> None:
    plane, ports = scoped.plane, scoped.ports
    port = scoped.backends.start("scoped-b")
    names = [f"b{n}" for n in range(5)]
    plane.write("b.yaml", [d for n in names for d in (service(n, target=port), endpoint_slice(n, [LOCAL], port), app(n))])
    for n in names:
        plane.wait_ready(f"ns/{n}")
    before = len(rds_pushes(scoped))
    plane.write("b.yaml", [d for n in names for d in (service(n, target=port), endpoint_slice(n, [LOCAL], port), app(n, marker="1" if n == "b2" else "0"))])
    wait_until(lambda: curl(ports.external, "b2.example.com").request_header("Marker") == "1", what="the change through Envoy")
    pushed = rds_pushes(scoped)[before:]
    assert [p["resources"] for p in pushed] == [2]  # b2's public and private route configurations, no other
    assert scoped.gateway.stat("http.ingress_http.rds.external_services/ns/b2.config_reload") == 2
    assert scoped.gateway.stat("http.ingress_http.rds.external_services/ns/b1.config_reload") == 1

    clusters = scoped.gateway.stat("cluster_manager.active_clusters")
    kept = [d for n in names if n != "b3" for d in (service(n, target=port), endpoint_slice(n, [LOCAL], port), app(n, marker="1" if n == "b2" else "0"))]
    plane.write("b.yaml", kept)
    wait_until(lambda: curl(ports.external, "b3.example.com").status == 404, what="the deleted Ingress's scope gone")
    wait_until(lambda: scoped.gateway.stat("cluster_manager.active_clusters") == clusters - 1, what="its cluster removed")
    assert curl(ports.internal, "b4.ns.svc").status == 200
