"""The pipeline's middle: object changes in, snapshots out, and each Ingress's readiness.

Sources call `apply()`; bursts are coalesced into one rebuild that runs the pure translator in a
worker thread (the gRPC streams keep running) and publishes the snapshot to the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import structlog

from kxds import baseline, faults
from kxds.metrics import Metrics
from kxds.model.config import KourierConfig, NetworkConfig, TrustBundle
from kxds.model.ingress import Ingress, RejectedIngress
from kxds.model.objects import ObjectKey, Parsed
from kxds.model.secret import Secret
from kxds.model.service import EndpointSlice, Service
from kxds.model.world import World
from kxds.quarantine import ENVOY_REJECTED, VERIFYING, VERIFYING_MESSAGE, Quarantine, implicated
from kxds.settings import GatewaySettings
from kxds.translate.encoded import Encoded
from kxds.translate.gateway import RECONCILE_FAILED, GatewayConfig, Outcome, TranslationCache, retranslate_ingress, translate, update_endpoints
from kxds.xds.type_urls import CLUSTER, ENDPOINT, ROUTE
from kxds.xds.fleet import Fleet
from kxds.xds.stream import Nacked
from kxds.xds.snapshot import Snapshot, build_snapshot

log = structlog.get_logger("kxds.controller")

NO_GATEWAY = "NoGatewayConnected"
UNINITIALIZED = "Uninitialized"
# Suspects held back while a snapshot tests the others are let in after this long without a verdict
# (a gateway that neither ACKs nor NACKs must not keep them out).
VERDICT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressStatus:
    namespace: str
    name: str
    ready: bool
    reason: str
    message: str
    hash: str
    hosts: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "ready": self.ready,
            "reason": self.reason,
            "message": self.message,
            "hash": self.hash,
            "hosts": list(self.hosts),
        }


@dataclass(frozen=True, slots=True)
class _Served:
    """An Ingress as of the snapshot that first carried its current translation."""

    hash: str
    outcome: Outcome
    since_serial: int


def build_world(objects: Iterable[Parsed]) -> World:
    ingresses: list[Ingress] = []
    services: dict[str, Service] = {}
    slices: dict[str, list[EndpointSlice]] = {}
    secrets: dict[str, Secret] = {}
    bundles: list[TrustBundle] = []
    kourier, network = KourierConfig(), NetworkConfig()
    for obj in objects:
        match obj:
            case Ingress():
                ingresses.append(obj)
            case Service():
                services[obj.key] = obj
            case EndpointSlice():
                slices.setdefault(obj.service_key, []).append(obj)
            case Secret():
                secrets[obj.key] = obj
            case KourierConfig():
                kourier = obj
            case NetworkConfig():
                network = obj
            case TrustBundle():
                bundles.append(obj)
    return World(
        ingresses=tuple(sorted(ingresses, key=lambda i: i.key)),
        services=services,
        endpoint_slices={k: tuple(sorted(v, key=lambda s: s.name)) for k, v in slices.items()},
        secrets=secrets,
        kourier=kourier,
        network=network,
        trust_bundles=tuple(sorted(bundles, key=lambda b: b.key)),
    )


class Controller:
    def __init__(self, fleet: Fleet, gateway: GatewaySettings, metrics: Metrics, *, debounce_seconds: float = 0.0,
                 corrupt_cluster: str = "", corrupt_host: str = "", kourier_algorithm: bool = False) -> None:
        self._fleet = fleet
        self._kourier_algorithm = kourier_algorithm  # the benchmark's baseline: no caches, no EDS, everything re-sent
        # Test-only faults that provoke real NACKs (faults.py).
        self._faults = (corrupt_cluster, corrupt_host)
        self._quarantine = Quarantine()
        self._gateway = gateway
        self._metrics = metrics
        self._debounce = debounce_seconds
        self._objects: dict[ObjectKey, Parsed] = {}
        self._served: dict[str, _Served] = {}
        self._serial = fleet.snapshot.serial
        self._dirty = asyncio.Event()
        self.primed = False
        self._rebuilt = asyncio.Event()
        # Rebuilds run one at a time (the run loop, or priming before it), so one cache is safe.
        self._cache = TranslationCache()
        # What changed since the last rebuild: only EndpointSlices and edited Ingresses → the fast
        # paths (new load assignments; an Ingress's own route configurations), else a full rebuild.
        self._full_rebuild = True
        self._endpoints_changed: set[str] = set()
        self._ingresses_changed: dict[str, Ingress] = {}
        self._world: World | None = None  # the last full rebuild's input
        self._slices: dict[str, dict[ObjectKey, EndpointSlice]] = {}  # "ns/service" → its slices
        # Convergence: when the oldest change not yet in a snapshot arrived, and, per published
        # serial, when the oldest change it carries arrived (observed once every gateway ACKed it).
        self._changed_at: float | None = None
        self._converging: dict[int, float] = {}
        # The snapshot testing the suspects not held back, while a culprit is being searched for,
        # and the newest rejected snapshot acted on (a second NACK of it is no new evidence).
        self._trial_serial = 0
        self._rejected_serial = 0

    @property
    def objects(self) -> Mapping[ObjectKey, Parsed]:
        return self._objects

    def apply(self, upserts: Mapping[ObjectKey, Parsed], deletes: Iterable[ObjectKey] = ()) -> None:
        changed: list[tuple[ObjectKey, Parsed | None, Parsed | None]] = []
        for key, obj in upserts.items():
            # A status write echoed by the watch parses to the same object: nothing to rebuild.
            before = self._objects.get(key)
            if isinstance(obj, (KourierConfig, NetworkConfig, TrustBundle)):
                for problem in obj.problems:
                    log.warning("config.invalid", problem=problem)
                if isinstance(obj, KourierConfig):
                    # An invalid value is never served: the key keeps the value it had.
                    obj = obj.keeping(before if isinstance(before, KourierConfig) else KourierConfig())
            if before != obj:
                self._objects[key] = obj
                changed.append((key, before, obj))
                for note in obj.notes if isinstance(obj, Ingress) else ():
                    log.warning("ingress.note", ingress=f"{key.namespace}/{key.name}", note=note)
        for key in deletes:
            removed = self._objects.pop(key, None)
            if removed is not None:
                changed.append((key, removed, None))
        for key, old, new in changed:
            if isinstance(old, Ingress) and isinstance(new, Ingress):
                self._ingresses_changed[new.key] = new
                continue
            if key.kind != "EndpointSlice":
                self._full_rebuild = True
                continue
            for piece in (old, new):
                if isinstance(piece, EndpointSlice):
                    self._endpoints_changed.add(piece.service_key)
            if isinstance(old, EndpointSlice):
                self._slices.get(old.service_key, {}).pop(key, None)
            if isinstance(new, EndpointSlice):
                self._slices.setdefault(new.service_key, {})[key] = new
        self._quarantine.release(key for key, _, _ in changed)
        if changed:
            if self._changed_at is None:
                self._changed_at = time.monotonic()
            self._dirty.set()

    async def rebuild(self) -> Snapshot:
        """Translate the current objects and publish the result to every gateway."""
        self._dirty.clear()
        if self.primed and not self._full_rebuild and not self._kourier_algorithm:
            patched = self._rebuild_ingresses() if self._ingresses_changed else None
            if patched is None and self._ingresses_changed:
                self._full_rebuild = True  # the change reaches beyond the Ingress's own routes
            elif patched is None or self._endpoints_changed:
                return self._rebuild_endpoints()
            else:
                return patched
        if self._kourier_algorithm:
            self._cache = TranslationCache()
        self._full_rebuild, self._endpoints_changed, self._ingresses_changed = False, set(), {}
        started = time.perf_counter()
        world = build_world(self._objects.values())
        kept, held, deferred = self._quarantine.split(world.ingresses)
        if held or deferred:
            world = replace(world, ingresses=kept)
        self._world = world
        rejected = [o for o in self._objects.values() if isinstance(o, RejectedIngress)]
        self._serial += 1
        config, snapshot = await asyncio.to_thread(
            _translate, world, self._gateway, self._serial, self._cache, self._fleet.snapshot, self._faults, self._kourier_algorithm,
            not self.primed,
        )
        elapsed = time.perf_counter() - started
        self._metrics.build_seconds.observe(elapsed)
        outcomes = dict(config.outcomes)
        for ingress, rejection in held:
            message = f"a gateway rejected this Ingress's configuration: {rejection.message}"
            outcomes[ingress.key] = Outcome(programmed=False, reason=ENVOY_REJECTED, message=message)
        for ingress in deferred:
            outcomes[ingress.key] = Outcome(programmed=False, reason=VERIFYING, message=VERIFYING_MESSAGE)
        self._track((*world.ingresses, *(ingress for ingress, _ in held), *deferred), rejected, outcomes, snapshot.serial)
        self._publish(snapshot)
        if self._quarantine.verdict_pending():
            self._await_verdict(snapshot.serial)
        for problem in config.problems:
            log.warning("config.invalid", problem=problem)
        log.info(
            "snapshot.built",
            serial=snapshot.serial,
            ingresses=len(world.ingresses),
            clusters=len(config.encoded.get(CLUSTER, ())),
            seconds=round(elapsed, 4),
        )
        self.primed = True
        self._signal_rebuilt()
        return snapshot

    def _signal_rebuilt(self) -> None:
        self._rebuilt.set()
        self._rebuilt = asyncio.Event()

    def _publish(self, snapshot: Snapshot) -> None:
        if self._changed_at is not None:
            self._converging[snapshot.serial] = self._changed_at
            self._changed_at = None
        self._fleet.publish(snapshot)

    def observe_convergence(self) -> None:
        """Called when gateways' state moves: record changes every gateway has now applied."""
        self._check_verdict()
        if not self._converging or not self._fleet.gateways:
            return
        now = time.monotonic()
        for serial in [s for s in self._converging if self._fleet.synced(s)]:
            self._metrics.convergence_seconds.observe(now - self._converging.pop(serial))

    def _rebuild_ingresses(self) -> Snapshot | None:
        """Only Ingresses were edited, each keeping its hosts and backends (scoped layout): new route
        configurations for those, swapped into the previous snapshot. None: a full rebuild is needed."""
        if self._world is None or self._quarantine.holding:
            return None
        started = time.perf_counter()
        tables: dict[str, Encoded] = {}
        for ingress in self._ingresses_changed.values():
            patched = retranslate_ingress(self._world, self._gateway, self._cache, ingress)
            if patched is None:
                return None
            tables.update((e.name, e) for e in patched)
        self._serial += 1
        for ingress in self._ingresses_changed.values():
            before = self._served.get(ingress.key)
            if before is None or before.hash != ingress.hash:
                self._served[ingress.key] = _Served(ingress.hash, Outcome(programmed=True), self._serial)
        self._ingresses_changed = {}
        return self._publish_patch(ROUTE, tables, started, "snapshot.routes", route_configurations=len(tables))

    def _rebuild_endpoints(self) -> Snapshot:
        """Only EndpointSlices changed: new load assignments for those Services, nothing else.

        Cheap enough (no world walk, no translation) to run on the event loop directly.
        """
        started = time.perf_counter()
        services, self._endpoints_changed = self._endpoints_changed, set()
        slices = {s: tuple(sorted(self._slices.get(s, {}).values(), key=lambda e: e.name)) for s in services}
        changed = update_endpoints(self._cache, slices)
        self._serial += 1
        return self._publish_patch(ENDPOINT, {e.name: e for e in changed}, started, "snapshot.endpoints", assignments=len(changed))

    def _publish_patch(self, type_url: str, changed: Mapping[str, Encoded], started: float, event: str, **counts: int) -> Snapshot:
        """A fast path's result: the previous snapshot with these resources replaced, as `self._serial`."""
        snapshot = self._fleet.snapshot.with_resources(self._serial, type_url, changed)
        self._publish(snapshot)
        elapsed = time.perf_counter() - started
        self._metrics.build_seconds.observe(elapsed)
        log.info(event, serial=snapshot.serial, **counts, seconds=round(elapsed, 4))
        self._signal_rebuilt()
        return snapshot

    async def wait_rebuilt(self) -> None:
        await self._rebuilt.wait()

    async def run(self) -> None:
        """Rebuild whenever objects changed. An isolated change is rebuilt at once; changes that
        arrive while a rebuild runs are coalesced into the next one, so bursts batch themselves
        in proportion to how long a rebuild takes."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce)  # 0 by default: only lets same-tick deliveries land
            try:
                await self.rebuild()
            except Exception:
                # Keep serving the last good snapshot; the next change triggers another attempt.
                log.exception("snapshot.failed", serial=self._serial)

    def on_nack(self, nack: Nacked, applied_serial: int) -> None:
        """A gateway rejected snapshot `nack.serial`: what it rejected changed since the snapshot
        it last applied in full, so the suspects are the Ingresses first served in between whose
        changes reach the rejected type; the quarantine narrows them down to the culprit
        (quarantine.py), then rebuilds."""
        if nack.serial <= self._rejected_serial:
            return  # another gateway, or another type, rejecting what the search already used
        self._rejected_serial = nack.serial
        ingresses = {o.key: o for o in self._objects.values() if isinstance(o, Ingress)}
        changed = [ingresses[key] for key, served in self._served.items()
                   if key in ingresses and served.outcome.programmed and applied_serial < served.since_serial <= nack.serial]
        suspects = implicated(changed, nack.type_url, nack.resource_names)
        culprits = self._quarantine.on_rejected(suspects, nack.message, nack.resource_names)
        for ingress in culprits:
            log.error("ingress.rejected_by_gateway", ingress=ingress.key, error=nack.message[:2000])
        if not suspects:
            log.error("xds.rejection_unexplained", serial=nack.serial, error=nack.message[:2000],
                      hint="no Ingress changed since the gateway's last applied configuration")
        elif not culprits:
            log.warning("xds.culprit_search", serial=nack.serial, suspects=len(suspects))
        self._full_rebuild = True
        self._dirty.set()

    def _await_verdict(self, serial: int) -> None:
        self._trial_serial = serial
        asyncio.get_running_loop().call_later(VERDICT_TIMEOUT_SECONDS, self._verdict_timeout, serial)

    def _verdict_timeout(self, serial: int) -> None:
        if self._trial_serial != serial:
            return
        self._trial_serial = 0
        if self._quarantine.accepted():
            log.warning("xds.culprit_search_timeout", serial=serial)
            self._full_rebuild = True
            self._dirty.set()

    def _check_verdict(self) -> None:
        """The snapshot testing half of the suspects was applied by every gateway: they are clean,
        and the held-back half comes in (a NACK of that searches it the same way)."""
        if self._trial_serial and self._quarantine.verdict_pending() and (not self._fleet.gateways or self._fleet.synced(self._trial_serial)):
            self._trial_serial = 0
            if self._quarantine.accepted():
                self._full_rebuild = True
                self._dirty.set()

    def _track(self, ingresses: Iterable[Ingress], rejected: Iterable[RejectedIngress], outcomes: Mapping[str, Outcome], serial: int) -> None:
        served: dict[str, _Served] = {}
        for ingress in ingresses:
            outcome = outcomes[ingress.key]
            before = self._served.get(ingress.key)
            if before is not None and before.hash == ingress.hash and before.outcome == outcome:
                served[ingress.key] = before
            else:
                served[ingress.key] = _Served(ingress.hash, outcome, serial)
                if outcome.reason:
                    log.warning("ingress.not_ready", ingress=ingress.key, reason=outcome.reason, message=outcome.message)
        for bad in rejected:
            before = self._served.get(bad.key)
            if before is None or before.hash != bad.hash:
                log.error("ingress.rejected", ingress=bad.key, error=str(bad.error))
            served[bad.key] = _Served(bad.hash, Outcome(programmed=False, reason=RECONCILE_FAILED, message=str(bad.error)), serial)
        self._served = served

    def acked_gateway_ips(self, key: str) -> set[str]:
        """Addresses of this replica's gateways that applied the Ingress's current translation."""
        served = self._served.get(key)
        if served is None:
            return set()
        return {g.peer_ip for g in self._fleet.gateways.values() if g.stream.synced_serial >= served.since_serial}

    def gateway_pods(self, namespace: str, service: str) -> list[str]:
        """Ready addresses of a Service's EndpointSlices: the gateway pods to probe."""
        return sorted({a for piece in self._slices.get(f"{namespace}/{service}", {}).values() for a in piece.addresses})

    def statuses(self) -> list[IngressStatus]:
        """Readiness of every Ingress of our class, as /ingresses reports it."""
        out = []
        for obj in self._objects.values():
            if not isinstance(obj, (Ingress, RejectedIngress)):
                continue
            served = self._served.get(obj.key)
            hosts = tuple(sorted(obj.hosts)) if isinstance(obj, Ingress) else ()
            ready, reason, message = self._readiness(served, obj.hash)
            out.append(IngressStatus(namespace=obj.namespace, name=obj.name, ready=ready, reason=reason, message=message, hash=obj.hash, hosts=hosts))
        out.sort(key=lambda s: (s.namespace, s.name))
        self._metrics.ingresses.labels("true").set(sum(s.ready for s in out))
        self._metrics.ingresses.labels("false").set(sum(not s.ready for s in out))
        return out

    def _readiness(self, served: _Served | None, current_hash: str) -> tuple[bool, str, str]:
        if served is None or served.hash != current_hash:
            return False, UNINITIALIZED, "Waiting for the configuration to be built"
        if not served.outcome.programmed or served.outcome.reason:
            return False, served.outcome.reason, served.outcome.message
        if not self._fleet.gateways:
            return False, NO_GATEWAY, "No Envoy gateway is connected to kxds"
        if not self._fleet.synced(served.since_serial):
            return False, UNINITIALIZED, "Waiting for load balancer to be ready"
        return True, "", ""


@contextlib.contextmanager
def _gc_paused(*, freeze: bool) -> Iterator[None]:
    """No cyclic GC while translating: a translation allocates millions of objects and makes no
    cycles (reference counting frees its garbage), yet every full collection re-scans all of them —
    measured: 2 of the 6 s of a cold translate at 10,000 Ingresses. Rebuilds run one at a time.

    `freeze` (the priming translation): what exists now is the long-lived world and its translation;
    the GC never scans it again (later full rebuilds reuse most of it from the cache). Else the
    first collection after the pause re-scans millions of objects (measured: ~0.5 s at 10,000)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def _translate(world: World, gateway: GatewaySettings, serial: int, cache: TranslationCache, previous: Snapshot,
               test_faults: tuple[str, str], kourier_algorithm: bool = False, priming: bool = False) -> tuple[GatewayConfig, Snapshot]:
    with _gc_paused(freeze=priming):
        config = translate(world, gateway, cache)
        corrupt_cluster, corrupt_host = test_faults
        if corrupt_cluster:
            config = faults.corrupt_cluster(config, corrupt_cluster)
        if corrupt_host:
            config = faults.corrupt_hosts(config, corrupt_host)
        if kourier_algorithm:
            config = baseline.inline_endpoints(config)
            return config, baseline.fresh_versions(build_snapshot(config, serial))
        return config, build_snapshot(config, serial, previous)
