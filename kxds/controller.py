"""The pipeline's middle: a store of the current objects and the scheduler of rebuilds.

Sources call `apply()`; each change goes to the incremental engine (engine/incremental.py), which
decides what it invalidates. A rebuild is an engine step on the event loop when the engine can
keep the world, else a full translation in a worker thread (the gRPC streams keep running); the
result is published to the fleet and each Ingress's readiness follows (readiness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace

import structlog

from kxds import baseline, coldstart
from kxds.engine.assemble import build_snapshot
from kxds.engine.incremental import Engine, Entry
from kxds.faults import Faults
from kxds.metrics import Metrics
from kxds.model.config import KourierConfig, NetworkConfig, TrustBundle
from kxds.model.ingress import Ingress, RejectedIngress
from kxds.model.objects import ObjectKey, Parsed
from kxds.model.secret import Secret
from kxds.model.service import EndpointSlice, Service
from kxds.model.world import World
from kxds.quarantine import ENVOY_REJECTED, VERIFYING, VERIFYING_MESSAGE, Quarantine, implicated
from kxds.readiness import NO_GATEWAY, UNINITIALIZED, IngressStatus, Moved, Readiness, rejected_outcome
from kxds.resources import CLUSTER
from kxds.settings import GatewaySettings
from kxds.translate.gateway import GatewayConfig, Outcome, TranslationCache, translate
from kxds.xds.fleet import Fleet
from kxds.xds.snapshot import Snapshot
from kxds.xds.stream import Nacked

__all__ = ["NO_GATEWAY", "UNINITIALIZED", "Controller", "IngressStatus", "build_world"]

log = structlog.get_logger("kxds.controller")

# Suspects held back while a snapshot tests the others are let in after this long without a verdict
# (a gateway that neither ACKs nor NACKs must not keep them out).
VERDICT_TIMEOUT_SECONDS = 10.0


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
                 corrupt_cluster: str = "", corrupt_host: str = "", kourier_algorithm: bool = False, translate_processes: int = 1) -> None:
        self._fleet = fleet
        self._processes = translate_processes  # the cold start's translation is spread over them
        self._kourier_algorithm = kourier_algorithm  # the benchmark's baseline: no caches, no EDS, everything re-sent
        # Test-only faults that provoke real NACKs (faults.py).
        faults = Faults(corrupt_cluster, corrupt_host)
        self._engine = Engine(gateway, transform=faults if faults else None)
        self._quarantine = Quarantine()
        self._readiness = Readiness(fleet)
        self._gateway = gateway
        self._metrics = metrics
        self._debounce = debounce_seconds
        self._objects: dict[ObjectKey, Parsed] = {}
        self._serial = fleet.snapshot.serial
        self._dirty = asyncio.Event()
        self.primed = False
        self._rebuilt = asyncio.Event()
        self.rebuilds = 0  # counts `_rebuilt` signals, so a waiter can tell it missed one
        self.translations = 0  # full translations so far (each frees what the one before built)
        # Convergence: when the oldest change not yet in a snapshot arrived, and, per published
        # serial, when the oldest change it carries arrived (observed once every gateway ACKed it).
        self._changed_at: float | None = None
        self._converging: dict[int, float] = {}
        # The snapshot testing the suspects not held back, while a culprit is being searched for,
        # and the newest rejected snapshot acted on (a second NACK of it is no new evidence).
        self._trial_serial = 0
        self._rejected_serial = 0
        # Called with the keys of Ingresses whose readiness moved (the status writer looks at those).
        self.on_moved: list[Callable[[Iterable[str]], None]] = []
        # Ingresses that stopped or started parsing since the last rebuild.
        self._unparsed: set[str] = set()

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
            self._engine.note(f"{key.namespace}/{key.name}", key.kind, old, new)
            if isinstance(old, RejectedIngress) or isinstance(new, RejectedIngress):
                self._unparsed.add(f"{key.namespace}/{key.name}")  # the engine never sees these
        if self._quarantine.holding:
            self._quarantine.release(key for key, _, _ in changed)
            self._engine.invalidate()  # what is held out may have changed
        if changed:
            if self._changed_at is None:
                self._changed_at = time.monotonic()
            self._dirty.set()

    async def rebuild(self) -> Snapshot:
        """Bring the served snapshot up to date with the objects and publish it to every gateway."""
        self._dirty.clear()
        if self.primed and not self._kourier_algorithm and not self._quarantine.holding:
            started = time.perf_counter()
            step = self._engine.step(self._serial + 1, self._fleet.snapshot)
            if step is not None:
                self._serial += 1
                self._publish(step.snapshot)
                unparsed, self._unparsed = self._unparsed, set()
                self._track_moved({**dict.fromkeys(unparsed), **step.moved}, step.snapshot.serial)
                elapsed = time.perf_counter() - started
                self._metrics.build_seconds.observe(elapsed)
                log.info("snapshot.step", serial=step.snapshot.serial, ingresses=len(step.moved), route_configurations=step.routes,
                         clusters=step.clusters, assignments=step.assignments, seconds=round(elapsed, 4))
                self._signal_rebuilt()
                return step.snapshot
        return await self._rebuild_all()

    async def _rebuild_all(self) -> Snapshot:
        started = time.perf_counter()
        self._unparsed = set()
        with _gc_paused(freeze=False):  # a collection here would scan every object (0.4 s at 10,000 Ingresses, measured)
            world = self._engine.take_world()
        kept, held, deferred = self._quarantine.split(world.ingresses)
        if held or deferred:
            world = replace(world, ingresses=kept)
        self._serial += 1
        config, snapshot = await asyncio.to_thread(self._translate, world, self._serial, not (held or deferred))
        self.translations += 1
        elapsed = time.perf_counter() - started
        self._metrics.build_seconds.observe(elapsed)
        outcomes: list[tuple[Ingress | RejectedIngress, Outcome]] = [(i, config.outcomes[i.key]) for i in world.ingresses]
        for ingress, rejection in held:
            message = f"a gateway rejected this Ingress's configuration: {rejection.message}"
            outcomes.append((ingress, Outcome(programmed=False, reason=ENVOY_REJECTED, message=message)))
        outcomes.extend((ingress, Outcome(programmed=False, reason=VERIFYING, message=VERIFYING_MESSAGE)) for ingress in deferred)
        outcomes.extend((bad, rejected_outcome(bad)) for bad in self._objects.values() if isinstance(bad, RejectedIngress))
        self._log_moved(self._readiness.track(outcomes, snapshot.serial, complete=True))
        self._publish(snapshot)
        if self._quarantine.verdict_pending():
            self._await_verdict(snapshot.serial)
        for problem in config.problems:
            log.warning("config.invalid", problem=problem)
        log.info("snapshot.built", serial=snapshot.serial, ingresses=len(world.ingresses), clusters=len(config.encoded.get(CLUSTER, ())),
                 seconds=round(elapsed, 4))
        if not self._kourier_algorithm:
            # The engine's indexes serve the next change, not the gateways: built once they have the snapshot.
            started = time.perf_counter()
            await asyncio.to_thread(self._index)
            log.info("engine.indexed", serial=snapshot.serial, seconds=round(time.perf_counter() - started, 4))
        self.primed = True
        self._signal_rebuilt()
        return snapshot

    def _translate(self, world: World, serial: int, incremental: bool) -> tuple[GatewayConfig, Snapshot]:
        """The full translation (in a worker thread): the engine's, or Kourier's algorithm."""
        with _gc_paused(freeze=not self.primed):
            if self._kourier_algorithm:
                config = baseline.inline_endpoints(translate(world, self._gateway, TranslationCache()))
                return config, baseline.fresh_versions(build_snapshot(config, serial))
            if not self.primed and self._processes > 1:
                self._warm(world)
            return self._engine.translate_all(world, serial, self._fleet.snapshot, incremental=incremental)

    def _index(self) -> None:
        with _gc_paused(freeze=not self.primed):
            self._engine.index()

    def _warm(self, world: World) -> None:
        """The cold start: other processes translate shares of the Ingresses into the cache first."""
        started = time.perf_counter()
        warmed = coldstart.warm(self._engine.cache, world, self._gateway, self._processes)
        for problem in warmed.problems:
            log.warning("translate.share_failed", problem=problem)
        if warmed.processes > 1:
            log.info("translate.shared", processes=warmed.processes, from_other_processes=warmed.seeded,
                     seconds=round(time.perf_counter() - started, 4), own_share_seconds=round(warmed.own_seconds, 4),
                     waiting_seconds=round(warmed.wait_seconds, 4), seeding_seconds=round(warmed.seed_seconds, 4))

    def _track_moved(self, moved: Mapping[str, Entry | None], serial: int) -> None:
        """A step's Ingresses into readiness: gone ones forgotten, unparsable ones failed."""
        current: list[tuple[Ingress | RejectedIngress, Outcome]] = []
        for key, entry in moved.items():
            if entry is not None:
                current.append((entry.ingress, entry.outcome))
                continue
            namespace, name = key.split("/", 1)
            bad = self._objects.get(ObjectKey("Ingress", namespace, name))
            if isinstance(bad, RejectedIngress):
                current.append((bad, rejected_outcome(bad)))
            else:
                self._readiness.forget([key])
        self._log_moved([*self._readiness.track(current, serial, complete=False)])

    def _log_moved(self, moved: list[Moved]) -> None:
        for callback in self.on_moved:
            callback(m.key for m in moved)
        for m in moved:
            if m.rejected:
                log.error("ingress.rejected", ingress=m.key, error=m.outcome.message)
            elif m.outcome.reason:
                log.warning("ingress.not_ready", ingress=m.key, reason=m.outcome.reason, message=m.outcome.message)

    def _signal_rebuilt(self) -> None:
        self.rebuilds += 1
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
                self._engine.invalidate()
                log.exception("snapshot.failed", serial=self._serial)

    def on_nack(self, nack: Nacked, applied_serial: int) -> None:
        """A gateway rejected snapshot `nack.serial`: what it rejected changed since the snapshot
        it last applied in full, so the suspects are the Ingresses first served in between whose
        changes reach the rejected type; the quarantine narrows them down to the culprit
        (quarantine.py), then rebuilds."""
        if nack.serial <= self._rejected_serial:
            return  # another gateway, or another type, rejecting what the search already used
        self._rejected_serial = nack.serial
        changed_keys = self._readiness.changed_between(applied_serial, nack.serial)
        changed = [o for o in self._objects.values() if isinstance(o, Ingress) and o.key in changed_keys]
        suspects = implicated(changed, nack.type_url, nack.resource_names)
        culprits = self._quarantine.on_rejected(suspects, nack.message, nack.resource_names)
        for ingress in culprits:
            log.error("ingress.rejected_by_gateway", ingress=ingress.key, error=nack.message[:2000])
        if not suspects:
            log.error("xds.rejection_unexplained", serial=nack.serial, error=nack.message[:2000],
                      hint="no Ingress changed since the gateway's last applied configuration")
        elif not culprits:
            log.warning("xds.culprit_search", serial=nack.serial, suspects=len(suspects))
        self._engine.invalidate()
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
            self._engine.invalidate()
            self._dirty.set()

    def _check_verdict(self) -> None:
        """The snapshot testing half of the suspects was applied by every gateway: they are clean,
        and the held-back half comes in (a NACK of that searches it the same way)."""
        if self._trial_serial and self._quarantine.verdict_pending() and (not self._fleet.gateways or self._fleet.synced(self._trial_serial)):
            self._trial_serial = 0
            if self._quarantine.accepted():
                self._engine.invalidate()
                self._dirty.set()

    def acked_gateway_ips(self, key: str) -> set[str]:
        """Addresses of this replica's gateways that applied the Ingress's current translation."""
        return self._readiness.acked_gateway_ips(key)

    def gateway_pods(self, namespace: str, service: str) -> list[str]:
        """Ready addresses of a Service's EndpointSlices: the gateway pods to probe."""
        return sorted({a for piece in self._engine.slices(f"{namespace}/{service}") for a in piece.addresses})

    def status_of(self, key: str) -> IngressStatus | None:
        """One Ingress's readiness ("ns/name"), None when it is not ours."""
        namespace, _, name = key.partition("/")
        obj = self._objects.get(ObjectKey("Ingress", namespace, name))
        return self._readiness.status(obj) if isinstance(obj, (Ingress, RejectedIngress)) else None

    def statuses(self) -> list[IngressStatus]:
        """Readiness of every Ingress of our class, as /ingresses reports it."""
        out = [self._readiness.status(obj) for obj in self._objects.values() if isinstance(obj, (Ingress, RejectedIngress))]
        out.sort(key=lambda s: (s.namespace, s.name))
        self._metrics.ingresses.labels("true").set(sum(s.ready for s in out))
        self._metrics.ingresses.labels("false").set(sum(not s.ready for s in out))
        return out


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
