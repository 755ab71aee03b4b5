"""The gRPC side: a thin ADS servicer that only moves messages, plus CSDS and the health service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kxds.settings import XdsTls
from kxds.xds.credentials import server_credentials
from kxds.xds.csds import client_status
from kxds.xds.fleet import CLOSED, Fleet

# Route configurations grow with the number of Ingresses; grpcio's 4 MiB default is far too small.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in self._serve(request_iterator, context, delta=False):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for response in self._serve(request_iterator, context, delta=True):
            yield response

    async def _serve(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext, *, delta: bool) -> AsyncIterator[Any]:
        gateway = self._fleet.connect(context.peer(), delta=delta)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await gateway.request_slots.acquire()
                    gateway.inbox.put_nowait(request)
            finally:
                gateway.inbox.put_nowait(CLOSED)

        reader = asyncio.create_task(read())
        try:
            while (item := await gateway.inbox.get()) is not CLOSED:
                for response in self._fleet.handle(gateway, item):
                    yield response
        finally:
            reader.cancel()
            self._fleet.disconnect(gateway)


class ClientStatusService(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """CSDS: each connected gateway's configuration, for `grpcurl`, istioctl-style tools and tests."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def _status(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        return client_status(list(self._fleet.gateways.values()), self._fleet.snapshot, request)

    async def FetchClientStatus(self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext) -> csds_pb2.ClientStatusResponse:
        return self._status(request)

    async def StreamClientStatus(
        self, request_iterator: AsyncIterator[csds_pb2.ClientStatusRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in request_iterator:
            yield self._status(request)


class XdsServer:
    """ADS and gRPC health on one port; health says SERVING only once the first snapshot is in."""

    def __init__(self, fleet: Fleet, address: str, tls: XdsTls | None = None) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # Kourier's gateways ping every 30 s; accept pings down to 20 s without GOAWAY.
                ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscoveryService(fleet), self._server)
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(ClientStatusService(fleet), self._server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = self._server.add_secure_port(address, server_credentials(tls)) if tls else self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen for xDS on {address}")

    async def start(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()

    async def set_serving(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 2.0) -> None:
        # Streams are long-lived: a graceful stop would wait on them forever (xds-protocol.md §1.4).
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
