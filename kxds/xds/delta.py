"""One incremental (delta) ADS stream as a pure state machine, sharing the SotW stream's ordering.

What the gateway holds is tracked per resource: a response carries only resources that are new or
at another version, and names removed since in `removed_resources`. A reconnecting gateway states
what it has in `initial_resource_versions` and is sent only what changed (xds-protocol.md §5).
Make-before-break, one outstanding response per type and never resending a rejected version are
the SotW stream's rules, inherited unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from kxds.xds.snapshot import Resource, Snapshot
from kxds.xds.stream import WILDCARD, SotwStream, StaleNonce, TypeState, _Response


@dataclass(slots=True)
class DeltaStream(SotwStream):
    def on_delta_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if self.node is None and request.HasField("node"):
            self.node = request.node
        type_url = request.type_url
        state = self.types.get(type_url)
        if state is None:
            state = self._new_state(type_url)
            state.requested = True
            claimed = dict(request.initial_resource_versions)
            if claimed:
                # A reconnecting gateway: what it holds now counts as acknowledged.
                current = self.snapshot.of_type(type_url)
                held = {n: current[n] if n in current and current[n].version == v else Resource(name=n, version=v)
                        for n, v in claimed.items()}
                state.acked = _Response("", "", held)
            else:
                state.force = True  # a new subscription is answered even when there is nothing
        nonce = request.response_nonce
        if nonce:
            if state.pending is None or nonce != state.pending.nonce:
                self._events.append(StaleNonce(type_url, nonce))
            elif request.HasField("error_detail"):
                self._reject(type_url, state, request.error_detail.message)
            else:
                self._accept(type_url, state)
        self._delta_subscribe(state, request)
        return self._delta_pump()

    def on_delta_snapshot(self, snapshot: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        self._take(snapshot)
        return self._delta_pump()

    def _delta_subscribe(self, state: TypeState, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        # Interned: the snapshot's names are, so a subscription holds no second copy of each.
        subscribe, unsubscribe = set(map(sys.intern, request.resource_names_subscribe)), set(request.resource_names_unsubscribe)
        first = not state.named_explicitly and not state.wildcard and not state.names
        # Legacy wildcard: a first request naming nothing subscribes to everything (§5.2).
        state.wildcard = (state.wildcard or WILDCARD in subscribe or (first and not subscribe)) and WILDCARD not in unsubscribe
        state.names.update(subscribe - {WILDCARD}, unsubscribe)
        state.named_explicitly = state.named_explicitly or bool(state.names)
        if state.acked is not None and unsubscribe:
            kept = self._lineage.derive(state.acked.resources, dict.fromkeys(unsubscribe))
            state.acked = _Response(state.acked.version, state.acked.nonce, kept)

    def _delta_pump(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        out, idle = [], []
        for type_url, state, desired in self._sendable():
            held = state.acked_resources
            # A forced answer to a known subscription re-sends everything (a modified EDS cluster
            # warms only on a fresh assignment); otherwise only what is new or changed.
            changed = sorted(desired) if state.force and state.acked is not None else self._diff(type_url, desired, held)
            removed = self._removed(type_url, desired, held)
            if state.acked is None and not desired and self._requested(type_url, state):
                continue  # all of it waits for its clusters: say nothing rather than "nothing"
            # Named resources that do not exist: said once, so the gateway need not wait for them.
            missing = sorted(state.names.view - self.snapshot.of_type(type_url).keys() - held.keys()) if state.force else []
            complete = self._covers(type_url, state, desired)
            if not (changed or removed or missing or state.force):
                if complete and not self._caught_up(type_url):
                    idle.append(type_url)  # its parents may still catch up in this pump
                continue
            version = self._version(type_url, desired)
            if version == state.rejected_version:
                continue
            out.append(self._delta_respond(type_url, state, version, desired, changed, [*removed, *missing], self._serial_if(complete, type_url)))
        for type_url in idle:
            self._caught_up(type_url)
        self._update_synced()
        self._keep_up()
        return out

    def _delta_respond(self, type_url: str, state: TypeState, version: str, desired: Mapping[str, Resource], changed: list[str],
                       removed: list[str], serial: int) -> discovery_pb2.DeltaDiscoveryResponse:
        nonce = self._sending(type_url, state, version, desired, serial, changed)
        response = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed)
        add = response.resources.add  # each resource's bytes copied once, into the response
        for name in changed:
            resource = desired[name]
            add(name=name, version=resource.version, resource={"type_url": resource.type_url, "value": resource.data})
        return response

