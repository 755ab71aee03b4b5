"""One state-of-the-world ADS stream as a pure state machine: no I/O, no clock, no logging.

The gRPC servicer feeds it requests and snapshots and sends what it returns. All protocol rules
live here (xds-protocol.md): per-type content versions, stale nonces ignored, ACK/NACK told apart
by `error_detail`, a rejected version never resent, at most one unacknowledged response per type
(which also bounds what a slow gateway can make us buffer), and make-before-break ordering —
a route configuration (or listener) is sent only once every cluster it names, and that cluster's
endpoints, are acknowledged; a cluster leaves CDS only once nothing acknowledged names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from kxds.xds.interest import Interest
from kxds.xds.lineage import Lineage
from kxds.xds.snapshot import FULL_STATE, ORDER, Resource, Snapshot, set_version
from kxds.xds.subscription import Subscribed
from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, SECRET

WILDCARD = "*"
# The responses of a type a gateway holds: the one it applied and the one on its way.
ROLES = ("acked", "pending")
# Types whose resources wait for the clusters they name: routes, and listeners calling ext-authz
# or a tracing collector.
DEPENDENTS = (LISTENER, ROUTE)
# Types a gateway asks for by name once it has applied what names them (a listener or scope its
# route configuration, a cluster its endpoints, either their secrets). Until the parents are
# applied, and every name they carry (`Resource.asks`) is asked for, the names asked for so far
# may not be all the snapshot needs: a delta client even ACKs a parent before subscribing to what
# it names. Parents first.
PARENTS = {CLUSTER: (), LISTENER: (), SCOPED_ROUTE: (LISTENER,), ROUTE: (LISTENER, SCOPED_ROUTE), ENDPOINT: (CLUSTER,),
           SECRET: (LISTENER, CLUSTER)}
# New or changed resources one response may carry, in bytes: a cold gateway at 10,000 Ingresses
# is owed ~50 MB of route configurations, and building, encoding and writing that as one message
# holds three copies of it at once. Past the budget the rest wait for this response's ACK (one
# resource larger than the budget still goes, alone).
RESPONSE_BUDGET = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sent:
    type_url: str
    version: str
    nonce: str
    resources: int
    size: int = field(default=0, compare=False)  # bytes of the resources carried


@dataclass(frozen=True, slots=True)
class Acked:
    type_url: str
    version: str


@dataclass(frozen=True, slots=True)
class Nacked:
    type_url: str
    version: str  # the rejected version
    message: str
    resource_names: tuple[str, ...]  # the resources that were new or changed in it
    serial: int = -1  # the snapshot the rejected response was built from


@dataclass(frozen=True, slots=True)
class StaleNonce:
    type_url: str
    nonce: str


Event = Sent | Acked | Nacked | StaleNonce


@dataclass(frozen=True, slots=True)
class _Response:
    version: str
    nonce: str
    resources: Mapping[str, Resource]
    # The snapshot it was built from, if it carries all of that snapshot's resources of its type
    # (not when routes were held back waiting for clusters); -1 otherwise.
    serial: int = -1
    # The snapshot current when it was sent (even when it carries only part of it).
    sent_serial: int = -1


@dataclass(slots=True)
class TypeState:
    """What one stream knows about one resource type."""

    requested: bool = False
    wildcard: bool = False
    names: Subscribed = field(default_factory=Subscribed)
    named_explicitly: bool = False
    last_nonce: str = ""
    pending: _Response | None = None  # sent, not yet ACKed or NACKed
    acked: _Response | None = None  # what the gateway applied last
    rejected_version: str | None = None
    last_error: str = ""
    # The version a reconnecting client says it already has (first request only).
    claimed_version: str = ""
    # Send even if unchanged: an EDS cluster that was modified warms only on a fresh response.
    force: bool = False
    # Newest snapshot whose resources of this type the gateway has applied.
    applied_serial: int = -1
    # (snapshot mapping, `names.serial`, the part of it asked for): `_requested`'s memo.
    covered: tuple[Mapping[str, Resource], int, Mapping[str, Resource]] | None = None

    @property
    def acked_resources(self) -> Mapping[str, Resource]:
        return self.acked.resources if self.acked else {}


@dataclass(slots=True)
class SotwStream:
    snapshot: Snapshot
    node: base_pb2.Node | None = None
    # Serial of the newest snapshot this gateway has fully applied (-1: none yet).
    synced_serial: int = -1
    types: dict[str, TypeState] = field(default_factory=dict)
    _nonce: int = 0
    _events: list[Event] = field(default_factory=list)
    # How the mappings this stream holds and sends derive from each other (diffs in O(changed)).
    _lineage: Lineage = field(default_factory=Lineage)
    # What its resources name (what parents ask for, what routes need), kept along the lineage.
    _interest: Interest = field(init=False)
    budget: int = RESPONSE_BUDGET

    def __post_init__(self) -> None:
        # The clusters routes and listeners need are counted from the gateway's first responses
        # on, and kept up with: counted only when a cluster first leaves, it would cost a count
        # of every route configuration in the middle of that change.
        self._interest = Interest(self._lineage, needing=[(dependent, role) for dependent in DEPENDENTS for role in ROLES])

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        if self.node is None and request.HasField("node"):
            self.node = request.node  # only the first request is guaranteed to carry it
        type_url = request.type_url
        state = self.types.get(type_url) or self._new_state(type_url)
        nonce = request.response_nonce
        if nonce and nonce != state.last_nonce:
            # An ACK/NACK overtaken by a newer response: record nothing, send nothing (§2.2).
            self._events.append(StaleNonce(type_url, nonce))
            return []
        if not nonce:
            state.requested = True
            state.claimed_version = request.version_info
        elif state.pending is not None:
            if request.HasField("error_detail"):
                self._reject(type_url, state, request.error_detail.message)
            else:
                self._accept(type_url, state)
        self._subscribe(state, request.resource_names, prune=type_url not in FULL_STATE)
        return self._pump()

    def _new_state(self, type_url: str) -> TypeState:
        # The subscription logs as many changes as the lineage remembers derivations.
        state = self.types[type_url] = TypeState(names=Subscribed(self._lineage.capacity))
        return state

    def on_snapshot(self, snapshot: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        self._take(snapshot)
        return self._pump()

    def _take(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        for mapping, base, names in snapshot.derivations():
            self._lineage.record(mapping, base, names)

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- requests --------------------------------------------------------------------------

    def _accept(self, type_url: str, state: TypeState) -> None:
        assert state.pending is not None
        previous = state.acked_resources
        state.acked, state.pending = state.pending, None
        state.rejected_version = None
        state.applied_serial = max(state.applied_serial, state.acked.serial)
        self._events.append(Acked(type_url, state.acked.version))
        if type_url == CLUSTER:
            resources = state.acked.resources
            modified = [n for n in self._lineage.differing(resources, previous) if n in previous and (ENDPOINT, n) in resources[n].needs]
            if modified and ENDPOINT in self.types:
                self.types[ENDPOINT].force = True

    def _reject(self, type_url: str, state: TypeState, message: str) -> None:
        assert state.pending is not None
        changed = tuple(self._lineage.differing(state.pending.resources, state.acked_resources))
        rejected, state.pending = state.pending, None
        state.rejected_version, state.last_error = rejected.version, message
        self._events.append(Nacked(type_url, rejected.version, message, changed, rejected.sent_serial))

    def _subscribe(self, state: TypeState, names: Iterable[str], *, prune: bool) -> None:
        wanted = frozenset(names)
        explicit = wanted - {WILDCARD} if WILDCARD in wanted else wanted
        # Legacy wildcard: an empty list means "everything" until a name was ever given (§4).
        wildcard = WILDCARD in wanted or (not wanted and not state.named_explicitly)
        state.named_explicitly = state.named_explicitly or bool(explicit)
        # A SotW ACK repeats every subscribed name (20,000 route configurations at 10,000
        # Ingresses): the same set is no change, so what was worked out on it still holds.
        state.wildcard = wildcard
        state.names.replace(explicit)
        if prune and not state.wildcard and state.acked is not None and state.acked.resources.keys() - state.names.view:
            # Names no longer asked for are dropped by the gateway (a removed scope's routes): what
            # it holds no longer keeps their clusters in CDS.
            # Its version is that of what remains, so asking for a dropped name again is answered.
            kept = {n: r for n, r in state.acked.resources.items() if n in state.names}
            self._lineage.record(kept, state.acked.resources, state.acked.resources.keys() - kept.keys())
            state.acked = _Response(set_version(kept), state.acked.nonce, kept, state.acked.serial)

    # -- responses -------------------------------------------------------------------------

    def _sendable(self) -> Iterator[tuple[str, TypeState, Mapping[str, Resource]]]:
        """Each requested type with no response outstanding, in ADS order, with what it should hold."""
        for type_url in (*ORDER, *sorted(self.types.keys() - set(ORDER))):
            state = self.types.get(type_url)
            if state is not None and state.requested and state.pending is None:
                yield type_url, state, self._desired(type_url, state)

    def _version(self, type_url: str, desired: Mapping[str, Resource]) -> str:
        # The whole type, as most subscriptions are: its version is the snapshot's, computed once;
        # a part of it is derived from a recorded ancestor's version.
        if desired is self.snapshot.of_type(type_url):
            version = self.snapshot.type_version(type_url)
            self._lineage.known_version(desired, int(version, 16))
            return version
        return self._lineage.version(desired)

    def _pump(self) -> list[discovery_pb2.DiscoveryResponse]:
        out, idle = [], []
        for type_url, state, desired in self._sendable():
            version = self._version(type_url, desired)
            complete = desired is self.snapshot.of_type(type_url) or self._covers(type_url, state, desired)
            if state.acked is None and not desired and self._requested(type_url, state):
                continue  # all of it waits for its clusters: say nothing rather than "nothing"
            if state.acked is None and state.claimed_version == version and type_url in FULL_STATE and state.wildcard:
                # A reconnecting gateway already holds exactly this: nothing to resend (§2.1).
                state.acked = _Response(version, "", desired)
            if self._unchanged(type_url, state, version, desired) and not (state.force and desired):
                if complete and not self._caught_up(type_url):
                    idle.append(type_url)  # its parents may still catch up in this pump
                continue
            if version == state.rejected_version:
                continue
            out.append(self._respond(type_url, state, version, desired, self._serial_if(complete, type_url)))
        for type_url in idle:
            self._caught_up(type_url)
        self._update_synced()
        self._keep_up()
        return out

    def _caught_up(self, type_url: str) -> bool:
        """A type with nothing to send that holds all it asked for holds the current snapshot's
        resources, once the types naming them do too (PARENTS)."""
        state = self.types[type_url]
        if state.applied_serial >= self.snapshot.serial:
            return True
        if self._serial_if(True, type_url) < 0:
            return False
        state.applied_serial = self.snapshot.serial
        return True

    def _serial_if(self, complete: bool, type_url: str) -> int:
        """The snapshot a response (or silence) brings the gateway up to: the current one if it
        carries everything asked for, the types naming these resources are current, and the
        gateway has asked for every resource of this type they name; else -1."""
        if not complete:
            return -1
        child = self.types[type_url]
        for parent in PARENTS.get(type_url, ()):
            state = self.types.get(parent)
            if state is None or not state.requested:
                continue
            if state.applied_serial < self.snapshot.serial or state.acked is None:
                return -1
            if not child.wildcard and not self._asked_for(type_url, parent, state.acked, child):
                return -1  # a delta gateway may ACK the parent before it subscribes to what it names
        return self.snapshot.serial

    def _unchanged(self, type_url: str, state: TypeState, version: str, desired: Mapping[str, Resource]) -> bool:
        if state.acked is not None and state.acked.version == version:
            return True  # same content
        if type_url in FULL_STATE:
            return False
        # RDS/EDS: a resource left out of a response is not deleted (§2.4), so only a new or
        # changed resource is worth a response.
        return not self._diff(type_url, desired, state.acked_resources)

    def _respond(self, type_url: str, state: TypeState, version: str, desired: Mapping[str, Resource], serial: int) -> discovery_pb2.DiscoveryResponse:
        sent = sorted(desired)
        if type_url not in FULL_STATE and not state.force:
            # RDS/EDS: Envoy updates only the watches whose resources a response carries and keeps
            # the others (xds-protocol.md §2.4), so an endpoint flip is one assignment on the wire.
            sent = self._diff(type_url, desired, state.acked_resources)
        nonce = self._sending(type_url, state, version, desired, serial, sent)
        response = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
        add = response.resources.add  # each resource's bytes copied once, into the response
        for name in sent:
            add(type_url=desired[name].type_url, value=desired[name].data)
        return response

    def _sending(self, type_url: str, state: TypeState, version: str, desired: Mapping[str, Resource], serial: int, sent: list[str]) -> str:
        """Record a response about to go out (the resources `sent` on the wire); returns its nonce."""
        self._nonce += 1
        nonce = str(self._nonce)
        # What the gateway holds once it ACKs is the whole desired set, sent or not.
        state.pending, state.last_nonce, state.force = _Response(version, nonce, desired, serial, self.snapshot.serial), nonce, False
        self._events.append(Sent(type_url, version, nonce, len(sent), sum(len(desired[name].data) for name in sent)))
        return nonce

    def _diff(self, type_url: str, desired: Mapping[str, Resource], held: Mapping[str, Resource]) -> list[str]:
        """Names in `desired` that `held` lacks or holds at another version, in proportion to what
        changed between them when their lineage is known."""
        return self._lineage.differing(desired, held)

    def _removed(self, type_url: str, desired: Mapping[str, Resource], held: Mapping[str, Resource]) -> list[str]:
        """Names `held` has and `desired` lacks."""
        return self._lineage.missing(desired, held)

    def _asked_for(self, type_url: str, parent_type: str, parent: _Response, child: TypeState) -> bool:
        """Has the gateway asked for every resource of the snapshot that `parent` names?"""
        return self._interest.all_asked(parent_type, type_url, parent.resources, self.snapshot.of_type(type_url), child.names)

    def _requested(self, type_url: str, state: TypeState) -> Mapping[str, Resource]:
        """The snapshot's resources this gateway asked for: the snapshot's own mapping when that is
        all of them (no copy), else the part asked for, derived from the last one when the
        snapshot's lineage allows (only the names that changed are looked at)."""
        available = self.snapshot.of_type(type_url)
        if state.wildcard:
            return available
        names, covered = state.names, state.covered
        if covered is not None and covered[0] is available and covered[1] == names.serial:
            return covered[2]
        changed = None
        if covered is not None:
            arrived, subscribed = self._lineage.between(available, covered[0]), names.since(covered[1])
            changed = arrived | subscribed if arrived is not None and subscribed is not None else None
        part: Mapping[str, Resource]
        if changed is None:
            part = available if available.keys() <= names.view else {n: available[n] for n in names.view if n in available}
        else:
            assert covered is not None
            before = covered[2]
            # The part is the whole snapshot mapping exactly when it is as large.
            size = len(before) + sum((n in available and n in names) - (n in before) for n in changed)
            if size == len(available):
                part = available
            else:
                part = self._lineage.derive(before, {n: available[n] if n in names and n in available else None for n in changed})
        state.covered = (available, names.serial, part)
        return part

    def _desired(self, type_url: str, state: TypeState) -> Mapping[str, Resource]:
        desired = self._requested(type_url, state)
        if type_url == CLUSTER:
            # Keep every cluster that a route or listener the gateway holds (or is being sent) names.
            held = state.acked_resources
            leaving = self._lineage.missing(desired, held) if held is not desired else []
            if leaving:
                needed = [self._interest.needed(dependent, role, response.resources) for dependent in DEPENDENTS for role in ROLES
                          if (response := self._response(dependent, role)) is not None]
                kept = {name: held[name] for name in leaving if any(name in tally for tally in needed)}
                if kept:
                    desired = self._lineage.derive(desired, kept)
        elif type_url in DEPENDENTS:
            held = state.acked_resources
            # What the gateway already holds at this version had its clusters in place when sent,
            # and they stay while it names them: only new or changed resources can be waiting.
            waiting = [name for name in self._diff(type_url, desired, held) if not all(self._applied(t, n) for t, n in desired[name].needs)]
            if waiting:
                # Not yet: keep what the gateway has until its clusters are warm.
                desired = self._lineage.derive(desired, {name: held.get(name) for name in waiting})
        return self._within_budget(type_url, state, desired)

    def _within_budget(self, type_url: str, state: TypeState, desired: Mapping[str, Resource]) -> Mapping[str, Resource]:
        """`desired` with what exceeds the budget left as the gateway holds it, in name order."""
        held, spent = state.acked_resources, 0
        changed = self._diff(type_url, desired, held)  # in name order
        for index, name in enumerate(changed):
            spent += len(desired[name].data)
            if spent > self.budget and index:
                return self._lineage.derive(desired, {n: held.get(n) for n in changed[index:]})
        return desired

    def _keep_up(self) -> None:
        """Move every answer the interest keeps on to what is now in its place, one step at a time:
        one left behind for long would be too far from it for the lineage to tell what changed."""
        for parent_type, type_url in self._interest.asked_pairs():
            parent, child = self.types.get(parent_type), self.types.get(type_url)
            if parent is not None and parent.acked is not None and child is not None:
                self._asked_for(type_url, parent_type, parent.acked, child)
        for dependent, role in self._interest.needing_roles():
            # Nothing pending: the next response of the type is derived from what the gateway
            # applied, so the tally waits there, one step from it, rather than where it last was.
            response = self._response(dependent, role)
            if response is None:
                response = self._response(dependent, "acked")
            if response is not None:
                self._interest.needed(dependent, role, response.resources)

    def _response(self, type_url: str, role: str) -> _Response | None:
        """The response of this type the gateway applied ("acked") or is being sent ("pending")."""
        state = self.types.get(type_url)
        if state is None:
            return None
        return state.acked if role == "acked" else state.pending

    def _applied(self, type_url: str, name: str) -> bool:
        """Has the gateway ACKed this resource and, transitively, everything it needs?"""
        state = self.types.get(type_url)
        resource = state.acked_resources.get(name) if state is not None else None
        return resource is not None and all(self._applied(t, n) for t, n in resource.needs)

    def _covers(self, type_url: str, state: TypeState, desired: Mapping[str, Resource]) -> bool:
        """Does `desired` carry every resource of the current snapshot this gateway asked for?"""
        return not self._lineage.differing(self._requested(type_url, state), desired)

    def _update_synced(self) -> None:
        """The newest snapshot the gateway has applied in full (drives Ingress readiness)."""
        serials = []
        for type_url in ORDER:
            state = self.types.get(type_url)
            if state is None or not state.requested:
                if type_url not in (ENDPOINT, SECRET, SCOPED_ROUTE):  # no EDS/SDS/SRDS subscription: nothing of it is wanted
                    return
                continue
            serials.append(state.applied_serial)
        self.synced_serial = max(self.synced_serial, min(serials))
