"""The ADS server over real gRPC on a free port: a scripted client instead of Envoy."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kxds.app import Running, running
from kxds.model.objects import Filters, ObjectKey, parse_object
from kxds.settings import DEFAULT_INGRESS_CLASS, Settings, XdsPki
from kxds.xds.fleet import MAX_PENDING_REQUESTS
from kxds.resources import CLUSTER, LISTENER
from tests.builders import ingress, path, rule, service, split
from tests.e2e.harness import gateway_leaf

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Running]:
    shutil.copytree(EXAMPLES, tmp_path / "source")
    settings = Settings(source_dir=tmp_path / "source", xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", pki=XdsPki(directory=tmp_path / "pki"))
    async with running(settings) as plane:
        yield plane


def gateway_channel(plane: Running) -> grpc.aio.Channel:
    """A channel authenticated as a gateway, with the certificate kxds provisioned."""
    assert plane.gateway_pki is not None
    cert, key = gateway_leaf(plane.gateway_pki)
    credentials = grpc.ssl_channel_credentials((plane.gateway_pki / "ca.crt").read_bytes(), private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(f"127.0.0.1:{plane.xds_port}", credentials)


def upsert(doc: dict[str, Any]) -> dict[ObjectKey, Any]:
    parsed = parse_object(doc, Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving"))
    assert parsed is not None
    return {parsed[0]: parsed[1]}


async def admin_get(plane: Running, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{plane.admin_port}{path}") as response:
        return response.status, await response.text()


async def eventually(plane: Running, path: str, needle: str, timeout: float = 5.0) -> str:
    """The admin page once it shows `needle` (the server handles stream messages asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _, body = await admin_get(plane, path)
        if needle in body or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.02)


def request(type_url: str, node: str = "", nonce: str = "", version: str = "", error: str = "") -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
    if node:
        req.node.id = node
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


async def test_health_is_serving_once_primed(plane: Running) -> None:
    async with gateway_channel(plane) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert await admin_get(plane, "/readyz") == (200, "ready\n")
    assert (await admin_get(plane, "/healthz"))[0] == 200


async def test_no_gateway_means_not_ready(plane: Running) -> None:
    status, body = await admin_get(plane, "/ingresses")
    assert status == 200 and '"reason": "NoGatewayConnected"' in body and '"ready": false' in body


async def ack_clusters_and_refuse_listeners(stream: Any, clusters: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryResponse:
    """ACK the CDS response, ask for listeners and NACK them ("refused for the test"); returns them."""
    await stream.write(request(CLUSTER, nonce=clusters.nonce, version=clusters.version_info))
    await stream.write(request(LISTENER))
    listeners: discovery_pb2.DiscoveryResponse = await stream.read()
    await stream.write(request(LISTENER, nonce=listeners.nonce, error="refused for the test"))
    return listeners


async def test_every_node_gets_the_same_configuration_and_nacks_are_counted(plane: Running) -> None:
    async with gateway_channel(plane) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        first, second = stub.StreamAggregatedResources(), stub.StreamAggregatedResources()
        await first.write(request(CLUSTER, node="gateway-a"))
        await second.write(request(CLUSTER, node="gateway-b"))
        a, b = await first.read(), await second.read()
        assert len(a.resources) == 2 and a.version_info == b.version_info and a.resources == b.resources
        listeners = await ack_clusters_and_refuse_listeners(first, a)
        assert listeners.type_url == LISTENER and len(listeners.resources) == 3
        metrics = await eventually(plane, "/metrics", 'kxds_xds_nacks_total{type="LDS"} 1.0')
        assert "kxds_connected_gateways 2.0" in metrics
        # A push to each of the two gateways, one ACK.
        assert 'kxds_xds_responses_total{type="CDS"} 2.0' in metrics and 'kxds_xds_acks_total{type="CDS"} 1.0' in metrics
        _, gateways = await admin_get(plane, "/gateways")
        assert "refused for the test" in gateways and "gateway-a" in gateways
        first.cancel()
        second.cancel()


async def test_csds_reports_what_each_gateway_acknowledged_and_rejected(plane: Running) -> None:
    async with gateway_channel(plane) as channel:
        ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await ads.write(request(CLUSTER, node="gateway-a"))
        await ack_clusters_and_refuse_listeners(ads, await ads.read())
        await eventually(plane, "/gateways", "refused for the test")

        csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        only_a = csds_pb2.ClientStatusRequest(node_matchers=[node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(exact="gateway-a"))])
        status = await csds.FetchClientStatus(only_a)
        assert [c.node.id for c in status.config] == ["gateway-a"]
        entries = {(e.type_url, e.name): e for e in status.config[0].generic_xds_configs}
        cluster = entries[(CLUSTER, "default/hello-00001")]
        assert (cluster.config_status, cluster.client_status) == (csds_pb2.SYNCED, dump_pb2.ACKED)
        assert cluster.version_info and cluster.xds_config.type_url == CLUSTER
        listener = entries[(LISTENER, "listener_8080")]
        assert (listener.config_status, listener.client_status) == (csds_pb2.ERROR, dump_pb2.NACKED)
        assert listener.error_state.details == "refused for the test"
        # The streaming form answers each request; a matcher for another node finds nothing.
        stream = csds.StreamClientStatus()
        await stream.write(csds_pb2.ClientStatusRequest(node_matchers=[node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(prefix="other"))]))
        assert not (await stream.read()).config
        stream.cancel()
        ads.cancel()


async def test_a_gateway_that_never_acknowledges_cannot_make_kxds_buffer(plane: Running) -> None:
    async with gateway_channel(plane) as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await stream.write(request(CLUSTER, node="stuck"))
        await eventually(plane, "/metrics", 'kxds_xds_responses_total{type="CDS"} 1.0')
        gateway = next(iter(plane.fleet.gateways.values()))
        # Twenty new cluster sets while the first response is unacknowledged (and unread).
        for n in range(20):
            plane.controller.apply({**upsert(service(f"extra-{n}")), **upsert(ingress(f"extra-{n}", rule([f"x{n}.example.com"], path(split(f"extra-{n}")))))})
            await plane.controller.wait_rebuilt()
        await asyncio.sleep(0.2)
        # One response outstanding per type is all a gateway is ever sent ahead of its ACK, and the
        # snapshot changes it missed are one queued marker: nothing grows with the churn.
        assert 'kxds_xds_responses_total{type="CDS"} 1.0' in (await admin_get(plane, "/metrics"))[1]
        assert gateway.inbox.qsize() <= 1 and gateway.request_slots._value == MAX_PENDING_REQUESTS  # type: ignore[attr-defined]
        # Once it acknowledges, it gets the newest configuration in one response.
        first = await stream.read()
        await stream.write(request(CLUSTER, nonce=first.nonce, version=first.version_info))
        latest = await stream.read()
        assert len(latest.resources) == len(first.resources) + 20
        stream.cancel()
