"""kill -9 of the control plane under traffic (file mode): Envoy keeps serving, a change made while
kxds was down reaches Envoy within 2 s of kxds being back, and what did not change is not re-sent.
(Kubernetes mode, with 2,000 Ingresses to prime, is tests/kube/test_priming.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, Traffic, curl, wait_until

pytestmark = pytest.mark.e2e


def steady(header: str) -> dict[str, object]:
    return ingress("steady", rule(["steady.example.com"], path(split("echo"), append={"X-Version": header})))


def test_kill_9_under_traffic_and_a_change_made_while_down(tmp_path: Path) -> None:
    ports, backends = ListenerPorts(), Backends()
    plane = ControlPlane(tmp_path, ports)
    gateway = Gateway(tmp_path, plane)
    restarted: ControlPlane | None = None
    try:
        port = backends.start("echo")
        plane.write("objects.yaml", [service("echo", target=port), endpoint_slice("echo", [LOCAL], port), steady("before")])
        plane.wait_ready("ns/steady")

        with Traffic(ports.external, ["steady.example.com"], 40, parallel=4) as traffic:
            listeners_applied = gateway.stat("listener_manager.lds.update_success")
            plane.process.kill()
            plane.process.wait()
            plane.stop()

            # While kxds is down: Envoy serves from what it has; the change waits in the source.
            plane.write("objects.yaml", [service("echo", target=port), endpoint_slice("echo", [LOCAL], port), steady("after"),
                                         ingress("added", rule(["added.example.com"], path(split("echo"))))])
            time.sleep(1.0)
            assert curl(ports.external, "steady.example.com").request_header("X-Version") == "before"

            time.sleep(5.0)  # long enough for Envoy's default backoff to have grown past 2 s
            restarted = ControlPlane(tmp_path, ports, xds_port=plane.xds_port, log_name="kxds-restarted.log")
            back = time.monotonic()  # kxds is serving again
            # The bootstrap's reconnect backoff (at most 1 s) brings the change within 2 s of that.
            wait_until(lambda: curl(ports.external, "added.example.com").status == 200, timeout=10, interval=0.02, what="the change made while down")
            delivered = time.monotonic() - back
            assert delivered < 2.0, f"the change made while kxds was down arrived {delivered:.2f}s after kxds was back"
            assert curl(ports.external, "steady.example.com").request_header("X-Version") == "after"
            restarted.wait_ready("ns/added", timeout=40)

        assert traffic.sent and traffic.failures == [], f"{len(traffic.failures)} of {traffic.sent} requests failed: {traffic.failures[:5]}"
        # Content versions are stable across restarts: the listeners, unchanged, were not re-sent.
        assert gateway.stat("listener_manager.lds.update_success") == listeners_applied
    finally:
        gateway.stop()
        if restarted is not None:
            restarted.stop()
        backends.close()
