"""Incremental xDS with a real Envoy (`kxds bootstrap --delta`): create, update, delete and an
endpoint flip; after a kill -9 of kxds the reconnecting Envoy states what it has and is sent only
what changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, curl, wait_until

pytestmark = pytest.mark.e2e


class DeltaStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.ports, self.backends = workdir, ListenerPorts(), Backends()
        self.plane = ControlPlane(workdir, self.ports)
        self.gateway = Gateway(workdir, self.plane, bootstrap_options={"delta": True})

    def pushes(self, plane: ControlPlane) -> list[dict[str, object]]:
        lines = plane.log_path.read_text().splitlines()
        return [e for e in map(json.loads, (line for line in lines if line.startswith("{"))) if e["event"] == "xds.push"]


@pytest.fixture(scope="module")
def delta(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeltaStack]:
    stack = DeltaStack(tmp_path_factory.mktemp("delta"))
    try:
        yield stack
    finally:
        stack.gateway.stop()
        stack.plane.stop()
        stack.backends.close()


def test_ingress_lifecycle_and_endpoint_flip_over_delta(delta: DeltaStack) -> None:
    plane, ports = delta.plane, delta.ports
    blue, green = delta.backends.start("blue"), delta.backends.start("green")
    plane.write("svc.yaml", [service("app", target=blue), endpoint_slice("app", [LOCAL], blue)])
    plane.write("app.yaml", [ingress("app", rule(["app.example.com"], path(split("app"))))])
    plane.wait_ready("ns/app")
    assert curl(ports.external, "app.example.com").json()["server"]["port"] == blue
    assert any(g["node"] for g in plane.gateways())

    plane.write("app.yaml", [ingress("app", rule(["app.example.com"], path(split("app"), append={"X-Delta": "1"})))])
    wait_until(lambda: curl(ports.external, "app.example.com").request_header("X-Delta") == "1", what="the update over delta")

    plane.write("svc.yaml", [service("app", target=green), endpoint_slice("app", [LOCAL], green)])
    wait_until(lambda: curl(ports.external, "app.example.com").json()["server"]["port"] == green, what="the endpoint flip over delta")
    # The flip was one load assignment on the wire.
    flip = [p for p in delta.pushes(plane) if p["type"] == "EDS"][-1]
    assert flip["resources"] == 1

    plane.write("other.yaml", [ingress("other", rule(["other.example.com"], path(split("app"))))])
    plane.wait_ready("ns/other")
    plane.remove("app.yaml")
    wait_until(lambda: curl(ports.external, "app.example.com").status == 404, what="the deletion over delta")
    assert curl(ports.external, "other.example.com").status == 200


def test_a_reconnecting_envoy_is_sent_only_what_changed(delta: DeltaStack) -> None:
    plane, gateway = delta.plane, delta.gateway
    applied = {name: gateway.stat(f"cluster_manager.cds.update_success" if name == "CDS" else "listener_manager.lds.update_success")
               for name in ("CDS", "LDS")}
    plane.process.kill()
    plane.process.wait()
    plane.stop()
    # While down: one new Ingress (a new cluster and new vhosts), nothing else.
    plane.write("late.yaml", [service("late", target=delta.backends.ports["blue"]), endpoint_slice("late", [LOCAL], delta.backends.ports["blue"]),
                              ingress("late", rule(["late.example.com"], path(split("late"))))])
    restarted = ControlPlane(delta.workdir, delta.ports, xds_port=plane.xds_port, log_name="kxds-restarted.log")
    delta.plane = restarted
    restarted.wait_ready("ns/late", timeout=40)
    assert curl(delta.ports.external, "late.example.com").status == 200
    sent = {(p["type"], p["resources"]) for p in delta.pushes(restarted)}
    # Listeners were unchanged: never sent. Clusters: just the new one.
    assert not any(kind == "LDS" for kind, _ in sent)
    assert ("CDS", 1) in sent and all(count <= 1 for kind, count in sent if kind == "CDS")
    assert gateway.stat("listener_manager.lds.update_success") == applied["LDS"]
