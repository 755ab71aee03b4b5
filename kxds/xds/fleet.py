"""The connected gateways and the snapshot they converge to; the I/O side of the streams."""

from __future__ import annotations

import asyncio
import logging
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from envoy.service.discovery.v3 import discovery_pb2

from kxds.metrics import Metrics
from kxds.xds import stream as xs
from kxds.xds.delta import DeltaStream
from kxds.xds.snapshot import ORDER, SHORT_NAMES, Snapshot

log = structlog.get_logger("kxds.xds")

# Queue marker: the fleet's snapshot changed; the stream reads the newest one when it gets here.
SNAPSHOT_CHANGED = object()
_KNOWN_TYPES = frozenset(ORDER)
MAX_TYPE_URL = 256
CLOSED = object()
# Requests read from a gateway but not yet handled. When full, kxds stops reading its stream and
# gRPC flow control pushes back on the gateway: a flooding client cannot grow memory.
MAX_PENDING_REQUESTS = 16


@dataclass(slots=True)
class Gateway:
    id: int
    peer: str
    stream: xs.SotwStream
    # Requests (bounded by `request_slots`), at most one SNAPSHOT_CHANGED marker, then CLOSED.
    inbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    request_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_PENDING_REQUESTS))
    connected_at: float = field(default_factory=time.time)
    snapshot_queued: bool = False
    last_nack: str = ""
    identity: str = ""  # the verified certificate identity; "" for a plaintext gateway (--insecure)
    unknown_nonce: int = 0

    @property
    def peer_ip(self) -> str:
        """The gateway's address as gRPC reports it ("ipv4:10.0.0.5:41234" → "10.0.0.5")."""
        address = self.peer.split(":", 1)[-1]
        return address.rsplit(":", 1)[0].strip("[]")

    @property
    def node_id(self) -> str:
        return self.stream.node.id if self.stream.node is not None else ""


class Fleet:
    def __init__(self, snapshot: Snapshot, metrics: Metrics) -> None:
        self.snapshot = snapshot
        self.gateways: dict[int, Gateway] = {}
        self._metrics = metrics
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.generation = 0  # counts changes of any gateway's state (the admin pages' cache key)
        self.sent_bytes = 0  # resource bytes sent to gateways so far
        self.on_change: list[Callable[[], None]] = []  # called whenever a gateway's state moves
        # Called with every rejection kxds should act on, and the serial the rejecting gateway has applied.
        self.on_nack: list[Callable[[xs.Nacked, int], None]] = []

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        for gateway in self.gateways.values():
            if not gateway.snapshot_queued:
                gateway.snapshot_queued = True
                gateway.inbox.put_nowait(SNAPSHOT_CHANGED)

    def connect(self, peer: str, *, delta: bool = False, identity: str = "") -> Gateway:
        stream = DeltaStream(self.snapshot) if delta else xs.SotwStream(self.snapshot)
        gateway = Gateway(id=next(self._ids), peer=peer, stream=stream, identity=identity)
        self.gateways[gateway.id] = gateway
        self._metrics.gateways.set(len(self.gateways))
        log.info("xds.connect", gateway=gateway.id, peer=peer, identity=identity)
        return gateway

    def disconnect(self, gateway: Gateway) -> None:
        self.gateways.pop(gateway.id, None)
        self._metrics.gateways.set(len(self.gateways))
        log.info("xds.disconnect", gateway=gateway.id, node=gateway.node_id, peer=gateway.peer)
        self._notify()

    def handle(self, gateway: Gateway, item: object) -> list[Any]:
        """Feed one inbox item to the gateway's state machine; log and count what happened.
        Returns DiscoveryResponses (SotW) or DeltaDiscoveryResponses (delta)."""
        stream = gateway.stream
        responses: list[Any]
        if item is SNAPSHOT_CHANGED:
            gateway.snapshot_queued = False
            responses = stream.on_delta_snapshot(self.snapshot) if isinstance(stream, DeltaStream) else stream.on_snapshot(self.snapshot)
        else:
            gateway.request_slots.release()
            if log.is_enabled_for(logging.DEBUG):
                self._log_request(gateway, item)
            if getattr(item, "type_url", None) not in _KNOWN_TYPES:
                return self._unknown_type(gateway, item)
            if isinstance(item, discovery_pb2.DeltaDiscoveryRequest):
                assert isinstance(stream, DeltaStream)
                responses = stream.on_delta_request(item)
            else:
                assert isinstance(item, discovery_pb2.DiscoveryRequest)
                responses = stream.on_request(item)
        for event in gateway.stream.take_events():
            self._record(gateway, event)
        self._notify()
        return responses

    def _unknown_type(self, gateway: Gateway, request: Any) -> list[Any]:
        """A type kxds does not serve: answered with nothing (so a client is not left waiting),
        counted, and never kept in the stream's state or in a metric label."""
        self._metrics.unknown_types.inc()
        if request.response_nonce or len(request.type_url) > MAX_TYPE_URL:
            return []  # the ACK of our empty answer, or nothing a real client would ask for
        gateway.unknown_nonce += 1
        nonce = f"unknown-{gateway.unknown_nonce}"
        if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
            return [discovery_pb2.DeltaDiscoveryResponse(type_url=request.type_url, nonce=nonce)]
        return [discovery_pb2.DiscoveryResponse(type_url=request.type_url, nonce=nonce)]

    @staticmethod
    def _log_request(gateway: Gateway, request: Any) -> None:
        kind = SHORT_NAMES.get(request.type_url, "unknown")
        if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
            log.debug("xds.request", gateway=gateway.id, type=kind, nonce=request.response_nonce, subscribe=list(request.resource_names_subscribe[:20]),
                      unsubscribe=list(request.resource_names_unsubscribe[:20]), error=request.error_detail.message)
        else:
            log.debug("xds.request", gateway=gateway.id, type=kind, nonce=request.response_nonce, names=list(request.resource_names[:20]),
                      error=request.error_detail.message)

    def synced(self, serial: int) -> bool:
        """Has every connected gateway applied snapshot `serial` or newer?"""
        return bool(self.gateways) and all(g.stream.synced_serial >= serial for g in self.gateways.values())

    async def wait_changed(self) -> None:
        """Wait for any gateway's state to move (ACK, NACK, connect, disconnect)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()
        for callback in self.on_change:
            callback()

    def _record(self, gateway: Gateway, event: xs.Event) -> None:
        kind = SHORT_NAMES[event.type_url]
        node = gateway.node_id
        match event:
            case xs.Sent(version=version, nonce=nonce, resources=count, size=size):
                self._metrics.responses.labels(kind).inc()
                self.sent_bytes += size
                log.info("xds.push", gateway=gateway.id, node=node, type=kind, version=version, nonce=nonce, resources=count)
            case xs.Acked(version=version):
                self._metrics.acks.labels(kind).inc()
                # The expected answer to every push (counted above, shown by `kxds status` and
                # CSDS): at debug, so a life-cycle event is not half a dozen lines per gateway.
                log.debug("xds.ack", gateway=gateway.id, node=node, type=kind, version=version)
            case xs.Nacked(version=version, message=message, resource_names=names):
                self._metrics.nacks.labels(kind).inc()
                gateway.last_nack = f"{kind} {version}: {message}"
                log.warning("xds.nack", gateway=gateway.id, node=node, type=kind, version=version, error=message, resources=list(names[:50]))
                accepted = [g.id for g in self.gateways.values() if g is not gateway and _holds(g, event.type_url, version)]
                if accepted:
                    # What this gateway rejects, others applied: holding it out would withdraw it
                    # from them. This gateway keeps its last good configuration of the type.
                    log.warning("xds.nack_disputed", gateway=gateway.id, type=kind, version=version, accepted_by=accepted)
                    return
                for callback in self.on_nack:
                    callback(event, gateway.stream.synced_serial)
            case xs.StaleNonce(nonce=nonce):
                self._metrics.stale.labels(kind).inc()
                log.debug("xds.stale_nonce", gateway=gateway.id, node=node, type=kind, nonce=nonce)


def _holds(gateway: Gateway, type_url: str, version: str) -> bool:
    state = gateway.stream.types.get(type_url)
    return state is not None and state.acked is not None and state.acked.version == version
