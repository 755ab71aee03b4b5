"""SIGTERM: kxds stops serving xDS, exits cleanly and promptly, and the gateway keeps serving."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from kxds.model.ingress import parse_ingress
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import Backends, ControlPlane, Gateway, ListenerPorts, curl

pytestmark = pytest.mark.e2e


def test_sigterm_exits_cleanly_and_the_gateway_keeps_serving(tmp_path: Path) -> None:
    ports, backends = ListenerPorts(), Backends()
    plane = ControlPlane(tmp_path, ports)
    gateway = Gateway(tmp_path, plane)
    try:
        port = backends.start("kept")
        doc = ingress("kept", rule(["kept.example.com"], path(split("kept"))))
        plane.write("kept.yaml", [service("kept", target=port), endpoint_slice("kept", ["127.0.0.1"], port), doc])
        plane.wait_ready("ns/kept", parse_ingress(doc).hash)
        plane.process.send_signal(signal.SIGTERM)
        assert plane.process.wait(timeout=10) == 0
        events = [json.loads(line)["event"] for line in plane.log_path.read_text().splitlines() if line.startswith("{")]
        # The stream's own clean-up may log its disconnect just after the final line.
        assert "kxds.stopped" in events[-2:] and "xds.disconnect" in events
        # Envoy keeps the last configuration it accepted while no control plane is reachable.
        assert curl(ports.external, "kept.example.com").status == 200
    finally:
        gateway.stop()
        plane.stop()
        backends.close()
