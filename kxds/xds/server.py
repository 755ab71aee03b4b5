"""The gRPC side: a thin ADS servicer that only moves messages, plus CSDS and the health service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kxds.xds.credentials import peer_identity
from kxds.xds.csds import client_status
from kxds.xds.fleet import CLOSED, Fleet

log = structlog.get_logger("kxds.xds")

# What kxds sends grows with the number of Ingresses (route configurations); grpcio's 4 MiB
# default is far too small.
MAX_SEND_BYTES = 512 * 1024 * 1024
# What a gateway sends is small: names and versions. The largest real request, a delta gateway
# reconnecting at 20,000 Ingresses, lists ~100,000 scopes with their versions (~8 MB).
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_NAMES_PER_REQUEST = 250_000
# Envoy opens one ADS stream per connection; a few more allow CSDS and tools beside it.
MAX_STREAMS_PER_CONNECTION = 16


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Who may use the xDS port, checked on every RPC: `identity` None lets anyone in (--insecure,
    every client is trusted as a gateway); "" admits any client whose certificate TLS verified
    (operator-managed CA); any other value admits only certificates naming that identity."""

    identity: str | None = None

    async def admit(self, context: grpc.aio.ServicerContext) -> str:
        """The client's verified identity ("" for plaintext under --insecure); aborts the RPC
        with UNAUTHENTICATED otherwise."""
        identity = peer_identity(context)
        if self.identity is None:
            return identity
        if not identity or (self.identity and identity != self.identity):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "kxds serves only authenticated gateways")
        return identity


def _names_in(request: Any) -> int:
    if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
        return len(request.resource_names_subscribe) + len(request.resource_names_unsubscribe) + len(request.initial_resource_versions)
    return len(request.resource_names)


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, fleet: Fleet, policy: PeerPolicy) -> None:
        self._fleet, self._policy = fleet, policy

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
        identity = await self._policy.admit(context)
        gateway = self._fleet.connect(context.peer(), delta=delta, identity=identity)
        if self._policy.identity is None:
            log.warning("xds.unauthenticated_gateway", gateway=gateway.id, peer=gateway.peer,
                        risk="--insecure: this client is trusted as a gateway without proving who it is")
        refused: list[str] = []

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if _names_in(request) > MAX_NAMES_PER_REQUEST:
                        refused.append(f"a request may name at most {MAX_NAMES_PER_REQUEST} resources")
                        return
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
        if refused:
            log.warning("xds.request_refused", gateway=gateway.id, peer=gateway.peer, reason=refused[0])
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused[0])


class ClientStatusService(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """CSDS: each connected gateway's configuration, for `grpcurl`, istioctl-style tools and tests."""

    def __init__(self, fleet: Fleet, policy: PeerPolicy) -> None:
        self._fleet, self._policy = fleet, policy

    def _status(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        return client_status(list(self._fleet.gateways.values()), self._fleet.snapshot, request)

    async def FetchClientStatus(self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext) -> csds_pb2.ClientStatusResponse:
        await self._policy.admit(context)
        return self._status(request)

    async def StreamClientStatus(
        self, request_iterator: AsyncIterator[csds_pb2.ClientStatusRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        await self._policy.admit(context)
        async for request in request_iterator:
            yield self._status(request)


class XdsServer:
    """ADS and gRPC health on one port; health says SERVING only once the first snapshot is in."""

    def __init__(self, fleet: Fleet, address: str, credentials: grpc.ServerCredentials | None = None,
                 policy: PeerPolicy = PeerPolicy()) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                # Kourier's gateways ping every 30 s; accept pings down to 20 s without GOAWAY.
                ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscoveryService(fleet, policy), self._server)
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(ClientStatusService(fleet, policy), self._server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = self._server.add_secure_port(address, credentials) if credentials else self._server.add_insecure_port(address)
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
