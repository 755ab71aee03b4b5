"""`kxds status` against a running kxds with two gateways."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from kxds.resources import LISTENER, ROUTE

from tests.conftest import Stack
from tests.e2e.harness import Gateway, free_port, gateway_channel, wait_until

pytestmark = pytest.mark.e2e


def kxds_status(admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kxds", "status", "--admin-address", admin], capture_output=True, text=True, timeout=30, check=False)


def test_status_shows_ingresses_and_two_gateways_with_their_versions(stack: Stack) -> None:
    second = Gateway(stack.workdir, stack.plane, name="gw-status")
    try:
        wait_until(lambda: len(gws := stack.plane.gateways()) == 2 and all(g["synced"] for g in gws), what="two synced gateways")
        result = kxds_status(f"127.0.0.1:{stack.plane.admin_port}")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "GATEWAYS (2 connected" in out
        rows = [line for line in out.splitlines() if line.startswith("3scale-kourier-gateway")]
        assert len(rows) == 2 and all("SYNCED" in row for row in rows)
        for gateway in stack.plane.gateways():
            assert gateway["acked"]["CDS"] in out and gateway["acked"]["RDS"] in out
        assert out.startswith("INGRESSES (")
    finally:
        second.stop()


def test_status_says_when_kxds_is_unreachable() -> None:
    result = kxds_status(f"127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach kxds's admin" in result.stderr


# The status route configuration every gateway holds in the default (scoped) layout.
STATUS_ROUTES = "internal_services/internalkourier"


def test_a_csds_client_reads_the_gateways_configuration(stack: Stack) -> None:
    wait_until(lambda: any(g["synced"] for g in stack.plane.gateways()), what="a synced gateway")
    with gateway_channel(stack.plane) as channel:
        status = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
    assert [c.node.id for c in status.config] == ["3scale-kourier-gateway"]
    entries = {(e.type_url, e.name): e for e in status.config[0].generic_xds_configs}
    reported = route_pb2.RouteConfiguration()
    entries[(ROUTE, STATUS_ROUTES)].xds_config.Unpack(reported)
    # What Envoy itself says it holds for the same route configuration.
    dump = json.loads(stack.gateway.admin("/config_dump?resource=dynamic_route_configs"))
    held = next(c["route_config"] for c in dump["configs"] if c["route_config"]["name"] == STATUS_ROUTES)
    assert sorted(v.name for v in reported.virtual_hosts) == sorted(v["name"] for v in held["virtual_hosts"])
    assert {e.type_url for e in entries.values()} >= {LISTENER, ROUTE}
