"""The incremental engine: the one place that decides what a change invalidates.

A full translation sets the engine's indexes; after that a change to an Ingress, a Service, an
EndpointSlice or a Secret no Ingress uses costs work in proportion to what depends on it: the
Ingresses using what changed, the Ingresses contending for their hosts, the clusters they name.
The result is the previous snapshot with only those resources replaced. What reaches everything —
config-kourier, config-network and trust bundles, a Secret in use, TLS (the HTTPS route
configurations hold every TLS vhost), Kourier's route layout (two route configurations hold every
vhost) — asks for a full translation instead. Pure: no I/O, no logging. The property test
(tests/property/test_engine.py) holds it to a fresh full translation after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from kxds.model.config import KourierConfig, NetworkConfig, TrustBundle
from kxds.model.ingress import Ingress
from kxds.model.objects import Parsed
from kxds.model.secret import Secret
from kxds.model.service import EndpointSlice, Service
from kxds.model.world import World
from kxds.resources import CLUSTER, ENDPOINT, ROUTE, SCOPED_ROUTE, SECRET, Encoded, Refs, refs
from kxds.settings import SCOPED_LAYOUT, GatewaySettings
from kxds.translate import names, tls
from kxds.translate.encoded import encode
from kxds.translate.gateway import (
    DOMAIN_CONFLICT,
    DOMAIN_CONFLICT_MESSAGE,
    RECONCILE_FAILED,
    Backend,
    ClusterEntry,
    GatewayConfig,
    IngressResult,
    Outcome,
    Plan,
    TranslationCache,
    cluster_entry,
    merged,
    precedence,
    translate,
)
from kxds.xds.snapshot import NONE, Resource, Snapshot

from kxds.engine.assemble import build_snapshot
from kxds.engine.claims import Claims
from kxds.engine.index import Index

# Applied to every resource served, by type URL (test-only faults provoke real NACKs with it).
Transform = Callable[[str, Encoded], Encoded]


@dataclass(frozen=True, slots=True)
class Entry:
    """What one Ingress contributes, as of the last step: its outcome and, if it was translated
    (it won its hosts), its translation."""

    ingress: Ingress
    outcome: Outcome
    result: IngressResult | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One incremental step: the new snapshot and the Ingresses whose outcome or translation moved
    (None: the Ingress is gone)."""

    snapshot: Snapshot
    moved: Mapping[str, Entry | None]
    routes: int = 0
    clusters: int = 0
    assignments: int = 0


@dataclass(slots=True)
class _Pending:
    ingresses: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    endpoints: set[str] = field(default_factory=set)  # Services whose EndpointSlices changed
    full: bool = True


class Engine:
    def __init__(self, gateway: GatewaySettings, *, transform: Transform | None = None) -> None:
        self.gateway = gateway
        self.cache = TranslationCache()
        self._transform = transform
        # The current objects.
        self._ingresses: dict[str, Ingress] = {}
        self._services: dict[str, Service] = {}
        # Service key → its slices in name order. A tuple, not a dict by slice: nearly every Service
        # has one slice, and 20,000 one-entry dicts were ~4 MB at 10,000 Knative Services.
        self._slices: dict[str, tuple[EndpointSlice, ...]] = {}
        self._secrets: dict[str, Secret] = {}
        self._kourier, self._network = KourierConfig(), NetworkConfig()
        self._bundles: dict[str, TrustBundle] = {}
        self._pending = _Pending()
        # Indexes of what is served, set by a full translation and kept by every step.
        self.entries: dict[str, Entry] = {}
        self._claims = Claims()  # host → contending Ingresses, and which own their hosts
        self._users = Index()  # Service key → Ingresses naming it
        self._cluster_users = Index()  # cluster → programmed Ingresses with it as a backend
        self._cluster_routes = Index()  # cluster → programmed Ingresses whose routes name it
        self._backends: dict[str, Backend] = {}  # served cluster → its merged backend
        self._tls_secrets: set[str] = set()  # Secrets some Ingress's spec.tls names
        self._incremental = False  # the last full translation left a world steps can keep
        self._unindexed: tuple[World, GatewayConfig] | None = None  # a full translation not indexed yet

    # The store side: every object change, as it happens.

    def note(self, key: str, kind: str, old: Parsed | None, new: Parsed | None) -> None:
        """Record one object's change; what it invalidates is decided by the next step."""
        pending = self._pending
        if kind == "Ingress":
            if isinstance(new, Ingress):
                self._ingresses[key] = new
            else:
                self._ingresses.pop(key, None)  # deleted, or no longer parses
            pending.ingresses.add(key)
        elif kind == "Service":
            if isinstance(new, Service):
                self._services[key] = new
            else:
                self._services.pop(key, None)
            pending.services.add(key)
        elif kind == "EndpointSlice":
            for piece in (old, new):
                if isinstance(piece, EndpointSlice):
                    self._put_slice(piece.service_key, piece.name, None)
                    pending.endpoints.add(piece.service_key)
            if isinstance(new, EndpointSlice):
                self._put_slice(new.service_key, new.name, new)
        elif kind == "Secret":
            if isinstance(new, Secret):
                self._secrets[key] = new
            else:
                self._secrets.pop(key, None)
            # A Secret no Ingress names and no setting reads changes nothing served.
            if key in self._tls_secrets or key.startswith(f"{self.gateway.system_namespace}/") or self._https_defaults():
                pending.full = True
        else:
            match new if new is not None else old:
                case KourierConfig():
                    self._kourier = new if isinstance(new, KourierConfig) else KourierConfig()
                case NetworkConfig():
                    self._network = new if isinstance(new, NetworkConfig) else NetworkConfig()
                case TrustBundle():
                    if isinstance(new, TrustBundle):
                        self._bundles[key] = new
                    else:
                        self._bundles.pop(key, None)
            pending.full = True

    def _put_slice(self, service: str, name: str, piece: EndpointSlice | None) -> None:
        """Replace (or with None, drop) the slice `name` of `service`; its other slices stay in order."""
        kept = [s for s in self._slices.get(service, ()) if s.name != name]
        if piece is not None:
            kept.append(piece)
            kept.sort(key=lambda s: s.name)
        if kept:
            self._slices[service] = tuple(kept)
        else:
            self._slices.pop(service, None)

    def take_world(self) -> World:
        """The world a full translation is about to translate; what is noted from now on is the next
        rebuild's. Called where changes are noted (the event loop), never from the worker thread
        that translates: clearing the pending changes there lost a change noted meanwhile."""
        self._pending = _Pending(full=False)
        return self.world()

    def invalidate(self) -> None:
        """The next rebuild translates everything (a quarantine verdict, a NACK)."""
        self._pending.full = True

    def world(self) -> World:
        """The current objects as the translator's input."""
        return World(
            ingresses=tuple(sorted(self._ingresses.values(), key=lambda i: i.key)),
            services=dict(self._services),
            endpoint_slices=dict(self._slices),
            secrets=dict(self._secrets),
            kourier=self._kourier,
            network=self._network,
            trust_bundles=tuple(b for _, b in sorted(self._bundles.items())),
        )

    # Full translation.

    def full(self, world: World, serial: int, previous: Snapshot | None, *, incremental: bool = True) -> tuple[GatewayConfig, Snapshot]:
        """Translate `world` from scratch (reusing cached encodings) and index what it serves.
        `world` comes from `take_world`."""
        config, snapshot = self.translate_all(world, serial, previous, incremental=incremental)
        self.index()
        return config, snapshot

    def translate_all(self, world: World, serial: int, previous: Snapshot | None, *, incremental: bool = True) -> tuple[GatewayConfig, Snapshot]:
        """`full` without the indexes, which only the next step needs: the caller can publish the
        snapshot first and `index()` after (a step indexes first if it was not). `incremental=False`
        (a quarantine holds some Ingresses out): the next change is full too. Leaves the pending
        changes alone: `take_world` took those `world` holds, and any noted since are the next step's."""
        config = translate(world, self.gateway, self.cache)
        if self._transform is not None:
            transform = self._transform
            config = replace(config, encoded={t: tuple(transform(t, e) for e in es) for t, es in config.encoded.items()})
        snapshot = build_snapshot(config, serial, previous)
        self._unindexed = (world, config)
        self._incremental = incremental and self._steppable(world)
        return config, snapshot

    def index(self) -> None:
        """Index what the last full translation serves (once; a no-op after)."""
        if self._unindexed is not None:
            world, config = self._unindexed
            self._unindexed = None
            self._index(world, config)

    def _steppable(self, world: World) -> bool:
        """Can steps keep this world? Only the scoped layout gives each Ingress its own routes, and
        HTTPS route configurations hold every TLS vhost."""
        return self.gateway.route_layout == SCOPED_LAYOUT and not self._https_defaults() and not any(i.tls for i in world.ingresses)

    def _https_defaults(self) -> bool:
        kourier = self._kourier
        return bool(kourier.certs_secret_name or kourier.cluster_cert_secret or self.gateway.default_certificate)

    def _index(self, world: World, config: GatewayConfig) -> None:
        self.entries, self._claims, self._users = {}, Claims(), Index()
        self._cluster_users, self._cluster_routes = Index(), Index()
        for ingress in world.ingresses:
            outcome = config.outcomes[ingress.key]
            cached = self.cache.ingresses.get(ingress.key)
            won = outcome.reason != DOMAIN_CONFLICT
            entry = Entry(ingress, outcome, cached[1] if won and cached is not None else None)
            self.entries[ingress.key] = entry
            self._claims.add(ingress, won=won)
            self._use(ingress.key, ingress, None)
            self._serve(ingress.key, entry, None)
        # Swapped in whole: `note` reads it on the event loop while this runs in a worker thread
        # (the set `_use` added to meanwhile is a superset, which errs towards full translations).
        self._tls_secrets = {f"{t.secret_namespace}/{t.secret_name}" for i in world.ingresses for t in i.tls}
        self._backends = {}
        served = {e.name for e in config.encoded.get(CLUSTER, ())}
        for name in served & self._cluster_users.keys():
            self._backends[name] = self._merged(name)

    # Incremental steps.

    def step(self, serial: int, previous: Snapshot) -> Step | None:
        """Apply the pending changes to `previous`; None when only a full translation can."""
        self.index()
        pending = self._pending
        if pending.full:
            return None
        touched = set(pending.ingresses)
        for service in pending.services:
            touched.update(self._users.get(service))
        if touched and not self._incremental:
            return None
        for key in touched:
            before, now = self.entries.get(key), self._ingresses.get(key)
            if (before is not None and before.ingress.tls) or (now is not None and now.tls):
                return None  # HTTPS route configurations hold every TLS vhost
        self._pending = _Pending(full=False)
        touched |= self._claims.reclaim(pending.ingresses, self._ingresses)
        world = World(services=self._services, secrets=self._secrets, kourier=self._kourier, network=self._network)
        plan = Plan(world, self.gateway, self.cache)
        moved: dict[str, Entry | None] = {}
        changes: dict[str, dict[str, Resource | None]] = {ROUTE: {}, SCOPED_ROUTE: {}, CLUSTER: {}, ENDPOINT: {}, SECRET: {}}
        clusters: set[str] = {names.cluster_name(*s.split("/", 1)) for s in pending.services}
        for key in sorted(touched):
            before, entry = self.entries.get(key), self._evaluate(key, plan)
            if entry is None:
                self.entries.pop(key, None)
                self.cache.ingresses.pop(key, None)
            else:
                self.entries[key] = entry
            if before == entry:
                continue
            moved[key] = entry
            self._use(key, entry.ingress if entry else None, before.ingress if before else None)
            self._serve(key, entry, before)
            for old_or_new in (before, entry):
                if old_or_new is not None and old_or_new.result is not None:
                    clusters |= old_or_new.result.backends.keys()
            self._routes(before, entry, changes)
        ca = plan.upstream_ca[0] if plan.upstream_ca is not None else None
        # Only with system-internal-tls does the CA secret come and go with the clusters using it.
        had_upstream_tls = ca is not None and any(b.upstream_tls for b in self._backends.values())
        for name in sorted(clusters):
            self._cluster(name, ca, previous, changes)
        for service in sorted(pending.endpoints):
            self._endpoints(names.cluster_name(*service.split("/", 1)), ca, previous, changes)
        if ca is not None and had_upstream_tls != any(b.upstream_tls for b in self._backends.values()):
            bundles = [b.pem for _, b in sorted(self._bundles.items()) if b.namespace == self.gateway.system_namespace and b.pem]
            message = tls.ca_secret(ca, bundles)
            changes[SECRET][message.name] = None if had_upstream_tls else Resource.encoded(SECRET, encode(message.name, message))
        self._drop_unchanged(changes, previous)
        snapshot = previous.with_changes(serial, {t: c for t, c in changes.items() if c})
        return Step(snapshot, moved, routes=len(changes[ROUTE]), clusters=len(changes[CLUSTER]), assignments=len(changes[ENDPOINT]))

    def _evaluate(self, key: str, plan: Plan) -> Entry | None:
        """The Ingress's entry as a full translation would give it (same code: `Plan`)."""
        ingress = self._ingresses.get(key)
        if ingress is None:
            return None
        if not self._claims.wins(key):
            self.cache.ingresses.pop(key, None)
            return Entry(ingress, Outcome(programmed=False, reason=DOMAIN_CONFLICT, message=DOMAIN_CONFLICT_MESSAGE))
        try:
            result = plan.translated(ingress)
        except Exception as exc:  # a translator bug hit by one Ingress must not take the others down
            self.cache.ingresses.pop(key, None)
            message = f"internal error translating this Ingress: {exc!r}"
            return Entry(ingress, Outcome(programmed=False, reason=RECONCILE_FAILED, message=message))
        self.cache.ingresses[key] = plan.ingress_cache[key]
        outcome = result.outcome if not result.outcome.programmed else Outcome(programmed=True)
        return Entry(ingress, outcome, result)

    def _use(self, key: str, now: Ingress | None, before: Ingress | None) -> None:
        """Service → Ingresses and Secret → Ingresses, for what a later change reaches."""
        for service in before.services if before is not None else ():
            self._users.discard(service, key)
        for service in now.services if now is not None else ():
            self._users.add(service, key)
        for entry in now.tls if now is not None else ():
            self._tls_secrets.add(f"{entry.secret_namespace}/{entry.secret_name}")

    def _serve(self, key: str, now: Entry | None, before: Entry | None) -> None:
        """Cluster → the programmed Ingresses using it."""
        for entry, index in ((before, False), (now, True)):
            if entry is None or entry.result is None or not entry.outcome.programmed:
                continue
            for mapping, names_ in ((self._cluster_users, entry.result.backends.keys()), (self._cluster_routes, entry.result.clusters)):
                for name in names_:
                    if index:
                        mapping.add(name, key)
                    else:
                        mapping.discard(name, key)

    def _merged(self, name: str) -> Backend:
        users = sorted(self._cluster_users.get(name), key=lambda k: precedence(self.entries[k].ingress))
        backend: Backend | None = None
        for key in users:
            result = self.entries[key].result
            assert result is not None
            backend = merged(backend, result.backends[name])
        assert backend is not None
        return backend

    def _cluster(self, name: str, ca: Secret | None, previous: Snapshot, changes: dict[str, dict[str, Resource | None]]) -> None:
        """Serve the cluster as its users now need it, or withdraw it when none names it."""
        if name not in self._cluster_users or name not in self._cluster_routes:
            self._backends.pop(name, None)
            self.cache.clusters.pop(name, None)
            self.cache.assignments.pop(name, None)
            for type_url in (CLUSTER, ENDPOINT):
                if name in previous.of_type(type_url):
                    changes[type_url][name] = None
            return
        backend = self._backends[name] = self._merged(name)
        self._put(name, cluster_entry(name, backend, ca, self.slices(backend.service.key), self.cache), previous, changes)

    def _endpoints(self, name: str, ca: Secret | None, previous: Snapshot, changes: dict[str, dict[str, Resource | None]]) -> None:
        backend = self._backends.get(name)
        if backend is not None and name not in changes[CLUSTER]:
            self._put(name, cluster_entry(name, backend, ca, self.slices(backend.service.key), self.cache), previous, changes)

    def slices(self, service: str) -> tuple[EndpointSlice, ...]:
        """A Service's EndpointSlices ("ns/name"), in name order."""
        return self._slices.get(service, ())

    def _put(self, name: str, built: ClusterEntry, previous: Snapshot, changes: dict[str, dict[str, Resource | None]]) -> None:
        self.cache.clusters[name] = built.cluster
        encoded = self._transform(CLUSTER, built.cluster[1]) if self._transform is not None else built.cluster[1]
        cluster = Resource.wrapped(CLUSTER, encoded, built.needs, built.needs)  # already Refs: shared, not copied
        _changed(changes[CLUSTER], previous.of_type(CLUSTER), cluster)
        if built.assignment is None:
            self.cache.assignments.pop(name, None)
            if name in previous.of_type(ENDPOINT):
                changes[ENDPOINT][name] = None
            return
        self.cache.assignments[name] = built.assignment
        _changed(changes[ENDPOINT], previous.of_type(ENDPOINT), Resource.wrapped(ENDPOINT, built.assignment[1], NONE, NONE))

    def _routes(self, before: Entry | None, now: Entry | None, changes: dict[str, dict[str, Resource | None]]) -> None:
        """The Ingress's own route configurations and scopes: the old ones withdrawn, the new in."""
        for type_url, resources in ((ROUTE, _tables(before)), (SCOPED_ROUTE, _scopes(before))):
            for name in resources:
                changes[type_url].setdefault(name, None)
        if now is None or now.result is None or not now.outcome.programmed:
            return
        needs = _clusters_needed(now.result.clusters)  # one for the Ingress's route configurations, as a full translation shares it
        for table in now.result.tables:
            table = self._transform(ROUTE, table) if self._transform is not None else table
            changes[ROUTE][table.name] = Resource.wrapped(ROUTE, table, needs, NONE)
        for scope, asks in now.result.scopes:
            changes[SCOPED_ROUTE][scope.name] = Resource.wrapped(SCOPED_ROUTE, scope, NONE, asks)

    def _drop_unchanged(self, changes: dict[str, dict[str, Resource | None]], previous: Snapshot) -> None:
        """Routes and scopes withdrawn and served again unchanged are no change."""
        for type_url in (ROUTE, SCOPED_ROUTE):
            served = previous.of_type(type_url)
            for name, resource in list(changes[type_url].items()):
                old = served.get(name)
                if resource is None and old is None:
                    del changes[type_url][name]
                elif resource is not None and old is not None and _same(old, resource):
                    del changes[type_url][name]


def _tables(entry: Entry | None) -> list[str]:
    return [t.name for t in entry.result.tables] if entry is not None and entry.result is not None and entry.outcome.programmed else []


def _scopes(entry: Entry | None) -> list[str]:
    return [s.name for s, _ in entry.result.scopes] if entry is not None and entry.result is not None and entry.outcome.programmed else []


def _clusters_needed(clusters: frozenset[str]) -> Refs:
    # Every cluster a programmed Ingress's routes name is served (it is one of its backends).
    return refs((CLUSTER, c) for c in clusters)


def _same(a: Resource, b: Resource) -> bool:
    return a.version == b.version and a.needs == b.needs and a.asks == b.asks


def _changed(changes: dict[str, Resource | None], served: Mapping[str, Resource], resource: Resource) -> None:
    old = served.get(resource.name)
    if old is None or not _same(old, resource):
        changes[resource.name] = resource
    else:
        changes.pop(resource.name, None)
