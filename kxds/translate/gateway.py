"""The whole gateway configuration from the whole world: the translator's entry point."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as tls_pb2

from kxds.model.ingress import Ingress
from kxds.model.secret import Secret
from kxds.model.service import EndpointSlice, Service, ServicePort
from kxds.model.world import World
from kxds.settings import SCOPED_LAYOUT, GatewaySettings
from kxds.translate import clusters, extensions, listeners, names, routes, scopes, tls
from kxds.translate.https import HttpsPlan
from kxds.resources import Encoded, content_version
from kxds.translate.encoded import RouteTable, encode
from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, SECRET, Refs, refs

# Ingress outcome reasons (Kourier's where Kourier has one).
DOMAIN_CONFLICT = "DomainConflict"
RECONCILE_FAILED = "ReconcileIngressFailed"
BACKEND_NOT_FOUND = "BackendNotFound"
DOMAIN_CONFLICT_MESSAGE = "Ingress rejected: ingress has a conflicting domain with another ingress"
ROUTING_CA_SECRET = "routing-serving-certs"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Whether an Ingress made it into the configuration, and why it is not fully served if not.

    A programmed Ingress can still carry a reason: its HTTPS is left out for a broken Secret.
    """

    programmed: bool
    reason: str = ""
    message: str = ""


PROGRAMMED = Outcome(programmed=True)
_CONFLICT = Outcome(programmed=False, reason=DOMAIN_CONFLICT, message=DOMAIN_CONFLICT_MESSAGE)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    listeners: tuple[listener_pb2.Listener, ...] = ()
    # Kourier's route configurations as their vhosts (the scoped layout's own keep bytes only).
    route_tables: tuple[RouteTable, ...] = ()
    # Route configuration name → the dynamic clusters its routes name (for make-before-break).
    route_clusters: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Listener name → the clusters its filters call (ext-authz, the tracing collector).
    listener_clusters: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Cluster name → (type URL, name) of what it needs first: its EDS assignment, its CA secret.
    cluster_needs: Mapping[str, Refs] = field(default_factory=dict)
    secrets: tuple[tls_pb2.Secret, ...] = ()
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    # Problems with gateway-wide settings (default certificates), logged by the controller.
    problems: tuple[str, ...] = ()
    # Type URL → name → (type URL, name) of what a gateway asks for once it has that resource (a
    # listener's route configuration and certificates, a scope's route configuration, a cluster's
    # endpoints): readiness waits until those are asked for and applied too.
    asks: Mapping[str, Mapping[str, Refs]] = field(default_factory=dict)
    # Type URL → every resource as it is served: encoded once, with its content version.
    encoded: Mapping[str, tuple[Encoded, ...]] = field(default_factory=dict)

    # Decoded on demand (render, tests): the serving path keeps only the encoded bytes.
    @property
    def route_configs(self) -> tuple[route_pb2.RouteConfiguration, ...]:
        return tuple(route_pb2.RouteConfiguration.FromString(e.data) for e in self.encoded.get(ROUTE, ()))

    @property
    def clusters(self) -> tuple[cluster_pb2.Cluster, ...]:
        return tuple(cluster_pb2.Cluster.FromString(e.data) for e in self.encoded.get(CLUSTER, ()))

    @property
    def load_assignments(self) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
        return tuple(endpoint_pb2.ClusterLoadAssignment.FromString(e.data) for e in self.encoded.get(ENDPOINT, ()))


@dataclass(frozen=True, slots=True)
class Backend:
    service: Service
    port: ServicePort
    http2: bool
    upstream_tls: bool


@dataclass(frozen=True, slots=True)
class IngressResult:
    """One Ingress translated: cached for as long as its inputs stay equal."""

    outcome: Outcome
    backends: Mapping[str, Backend]
    external: tuple[Encoded, ...] = ()
    internal: tuple[Encoded, ...] = ()
    clusters: frozenset[str] = frozenset()
    # The scoped layout: this Ingress's own route configurations and the scopes naming them.
    tables: tuple[Encoded, ...] = ()
    scopes: tuple[scopes.Scope, ...] = ()


class TranslationCache:
    """Earlier results, reused when their inputs compare equal, so one change re-translates only
    what depends on it. Entries not used by the latest translation are dropped."""

    def __init__(self) -> None:
        self.ingresses: dict[str, tuple[tuple[object, ...], IngressResult]] = {}
        # Keyed by cluster name; each entry keeps the inputs it was built from.
        self.clusters: dict[str, tuple[tuple[object, ...], Encoded]] = {}
        self.assignments: dict[str, tuple[tuple[object, ...], Encoded]] = {}
        self.tables: dict[str, tuple[RouteTable, Encoded]] = {}


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Equal inputs. Tuple equality tries identity first for each element (in C), and unchanged
    objects are the very same objects, so this rarely calls a dataclass's __eq__."""
    return a == b


def translate(world: World, gateway: GatewaySettings, cache: TranslationCache | None = None) -> GatewayConfig:
    plan = Plan(world, gateway, cache or TranslationCache())
    for ingress in sorted(world.ingresses, key=precedence):
        try:
            plan.outcomes[ingress.key] = plan.add(ingress)
        except Exception as exc:  # a translator bug hit by one Ingress must not take the others down
            message = f"internal error translating this Ingress: {exc!r}"
            plan.outcomes[ingress.key] = Outcome(programmed=False, reason=RECONCILE_FAILED, message=message)
    return plan.build()


@functools.cache
def _status_table(ext_authz: bool) -> tuple[Encoded, scopes.Scope]:
    """The scoped layout's `internalkourier` route configuration and its one scope."""
    table = scopes.table(names.INTERNAL_ROUTES, names.STATUS_VHOST, [routes.status_vhost(ext_authz).encoded])
    (scope,) = scopes.scopes(names.INTERNAL_ROUTES, names.STATUS_VHOST, [names.STATUS_VHOST])
    return table.encode(), scope


class Plan:
    """The configuration being assembled, one Ingress at a time."""

    def __init__(self, world: World, gateway: GatewaySettings, cache: TranslationCache) -> None:
        self.world, self.gateway, self.cache = world, gateway, cache
        # The legacy KOURIER_EXTAUTHZ_* environment wins over config-kourier's keys, as in Kourier.
        self.kourier = world.kourier if gateway.ext_authz is None else replace(world.kourier, ext_authz=gateway.ext_authz)
        self.ext_authz = self.kourier.ext_authz is not None
        self.scoped = gateway.route_layout == SCOPED_LAYOUT
        self.outcomes: dict[str, Outcome] = {}
        self.backends: dict[str, Backend] = {}
        self.external: list[Encoded] = []
        self.internal: list[Encoded] = [] if self.scoped else [routes.status_vhost(self.ext_authz).encoded]
        self.scoped_results: list[IngressResult] = []
        self.referenced: set[str] = set()
        self.claimed: dict[str, str] = {}
        self.https = HttpsPlan(world.secrets, self.kourier, gateway)
        self.upstream_ca = upstream_ca(world, gateway)
        self.ingress_cache: dict[str, tuple[tuple[object, ...], IngressResult]] = {}

    def add(self, ingress: Ingress) -> Outcome:
        key, claimed = ingress.key, self.claimed
        hosts = list(_claims(ingress))
        if any(claimed.get(h, key) != key for h in hosts):
            return _CONFLICT
        for host in hosts:
            claimed[host] = key
        result = self.translated(ingress)
        if not result.outcome.programmed:
            return result.outcome
        for name, backend in result.backends.items():
            self.backends[name] = merged(self.backends.get(name), backend)
        if self.scoped:
            self.scoped_results.append(result)
        else:
            self.external.extend(result.external)
            self.internal.extend(result.internal)
        self.referenced |= result.clusters
        # A broken certificate takes out the Ingress's HTTPS only; plain HTTP keeps being served.
        problem = self.https.add(ingress, self.gateway.http_option_disabled)
        return Outcome(programmed=True, reason=RECONCILE_FAILED, message=problem) if problem else PROGRAMMED

    def inputs(self, ingress: Ingress) -> tuple[object, ...]:
        """Everything the Ingress's own translation depends on: its cache entry's key."""
        upstream = self.upstream_ca is not None and not self.upstream_ca[1]
        return (ingress, upstream, self.upstream_ca is not None, self.gateway.http_option_disabled, self.ext_authz,
                *(self.world.services.get(ref) for ref in sorted(ingress.services)))

    def translated(self, ingress: Ingress) -> IngressResult:
        """The Ingress's own translation, from the cache when nothing it depends on changed."""
        inputs = self.inputs(ingress)
        cached = self.cache.ingresses.get(ingress.key)
        if cached is not None and _same(cached[0], inputs):
            self.ingress_cache[ingress.key] = cached
            return cached[1]
        result = self._translate_ingress(ingress)
        self.ingress_cache[ingress.key] = (inputs, result)
        return result

    def _translate_ingress(self, ingress: Ingress) -> IngressResult:
        found = backends_of(ingress, self.world.services, internal_tls=self.upstream_ca is not None)
        if isinstance(found, str):
            return IngressResult(Outcome(programmed=False, reason=BACKEND_NOT_FOUND, message=found), {})
        if self.upstream_ca is not None and self.upstream_ca[1] and any(b.upstream_tls for b in found.values()):
            message = f"system-internal-tls is enabled but {self.upstream_ca[1]}"
            return IngressResult(Outcome(programmed=False, reason=RECONCILE_FAILED, message=message), {})
        if self.scoped and (wildcard := _unscopable(ingress)) is not None:
            message = (f"{wildcard}: the scoped route layout (the default) routes exact hosts only; "
                       "wildcard hosts and rules without hosts need --route-layout=kourier")
            return IngressResult(Outcome(programmed=False, reason=RECONCILE_FAILED, message=message), {})
        vhosts = routes.ingress_virtual_hosts(ingress, redirects_disabled=self.gateway.http_option_disabled, ext_authz=self.ext_authz)
        external = tuple(v.encoded for v in vhosts.external)
        internal = tuple(v.encoded for v in vhosts.internal)
        used = shared_set(vhosts.clusters, ingress.services)
        if not self.scoped:
            return IngressResult(PROGRAMMED, found, external=external, internal=internal, clusters=used)
        tables: list[Encoded] = []
        scoped: list[scopes.Scope] = []
        for table_name, encoded, group in ((names.EXTERNAL_ROUTES, external, vhosts.external), (names.INTERNAL_ROUTES, internal, vhosts.internal)):
            if not group:
                continue
            # Only the joined bytes are kept: the vhosts' own would double the memory routes take.
            tables.append(scopes.table(table_name, ingress.key, encoded).encode())
            hosts = (h for v in group for h in v.hosts)
            scoped.extend(scopes.scopes(table_name, ingress.key, hosts))
        return IngressResult(PROGRAMMED, found, clusters=used, tables=tuple(tables), scopes=tuple(scoped))

    def build(self) -> GatewayConfig:
        world, https, cache = self.world, self.https, self.cache
        referenced = self.referenced | https.clusters
        tables = [] if self.scoped else [RouteTable.of(names.EXTERNAL_ROUTES, self.external), RouteTable.of(names.INTERNAL_ROUTES, self.internal)]
        tables += [RouteTable.of(name, (v.encoded for v in vhosts)) for name, vhosts in https.route_config_vhosts().items()]
        wanted = sorted((name, b) for name, b in self.backends.items() if name in referenced)
        ca = self.upstream_ca[0] if self.upstream_ca is not None else None
        needs: dict[str, Refs] = {}
        built_clusters: dict[str, tuple[tuple[object, ...], Encoded]] = {}
        built_assignments: dict[str, tuple[tuple[object, ...], Encoded]] = {}
        for name, b in wanted:
            built = cluster_entry(name, b, ca, world.endpoint_slices.get(b.service.key, ()), cache)
            built_clusters[name], needs[name] = built.cluster, built.needs
            if built.assignment is not None:
                built_assignments[name] = built.assignment
        encoded_tables = {}
        for table in tables:
            previous = cache.tables.get(table.name)
            unchanged = previous is not None and _same(previous[0].vhosts, table.vhosts)
            encoded_tables[table.name] = previous if unchanged and previous is not None else (table, table.encode())
        # Keep only what this translation used: memory stays proportional to the world.
        cache.ingresses, cache.clusters, cache.assignments, cache.tables = self.ingress_cache, built_clusters, built_assignments, encoded_tables
        route_clusters = {t.name: frozenset(referenced) for t in tables}
        scoped: dict[str, tuple[Encoded, ...]] = {}
        own_tables: list[Encoded] = []
        scope_asks: dict[str, Refs] = {}
        if self.scoped:
            # Each Ingress's route configurations (cached with its translation) name only its clusters.
            status_table, status_scope = _status_table(self.ext_authz)
            owned = [(status_table, frozenset[str]()), *((t, r.clusters) for r in self.scoped_results for t in r.tables)]
            own_tables = [table for table, _ in owned]
            route_clusters.update((table.name, used) for table, used in owned)
            all_scopes = [status_scope, *(s for r in self.scoped_results for s in r.scopes)]
            scoped[SCOPED_ROUTE] = tuple(scope for scope, _ in all_scopes)
            scope_asks = {scope.name: asks for scope, asks in all_scopes}
        bundles = [b.pem for b in world.trust_bundles if b.namespace == self.gateway.system_namespace and b.pem]
        secrets = https.secrets() + ([tls.ca_secret(ca, bundles)] if ca and any(b.upstream_tls for _, b in wanted) else [])
        all_listeners = listeners.plain_listeners(self.gateway, self.kourier) + https.listeners()
        services = extensions.service_clusters(self.kourier.ext_authz, self.kourier.tracing)
        service_names = frozenset(c.name for c in services)
        return GatewayConfig(
            listeners=tuple(all_listeners),
            route_tables=tuple(tables),
            route_clusters=route_clusters,
            listener_clusters={lis.name: service_names for lis in all_listeners},
            cluster_needs=needs,
            secrets=tuple(secrets),
            outcomes=self.outcomes,
            problems=tuple(https.problems),
            asks={CLUSTER: needs, LISTENER: {lis.name: listeners.asks(lis) for lis in all_listeners}, SCOPED_ROUTE: scope_asks},
            encoded={
                CLUSTER: (*(e for _, e in built_clusters.values()), *(encode(c.name, c) for c in services)),
                ENDPOINT: tuple(e for _, e in built_assignments.values()),
                LISTENER: tuple(encode(lis.name, lis) for lis in all_listeners),
                ROUTE: (*(e for _, e in encoded_tables.values()), *own_tables),
                SECRET: tuple(encode(s.name, s) for s in secrets),
                **scoped,
            },
        )


def shared_set(names: Iterable[str], same: frozenset[str]) -> frozenset[str]:
    """`names` as a set, `same` itself if equal: the clusters an Ingress's routes name are, nearly
    always, its Services ("ns/name" both), and a set is 216 bytes or more (10,000 at 10,000 Ingresses)."""
    found = names if isinstance(names, frozenset) else frozenset(names)
    return same if found == same else found


def claimed_hosts(ingress: Ingress) -> frozenset[str]:
    """The hosts an Ingress claims against the others (a rule without hosts claims every host)."""
    return frozenset(_claims(ingress))


def _claims(ingress: Ingress) -> Iterator[str]:
    """`claimed_hosts` in rule order, repeats included (a full translation checks them without a set)."""
    return (h for rule in ingress.rules for h in (rule.hosts or ("*",)))


def precedence(ingress: Ingress) -> tuple[str, str, str]:
    """The older Ingress wins a host, then the smaller name: a restart can never flip ownership."""
    return (ingress.creation_timestamp, ingress.namespace, ingress.name)


def merged(existing: Backend | None, backend: Backend) -> Backend:
    """One cluster per Service: the first Ingress (in precedence order) picks the port; HTTP/2 and
    upstream TLS only if every Ingress using it allows them."""
    if existing is None:
        return backend
    return Backend(existing.service, existing.port, existing.http2 and backend.http2, existing.upstream_tls and backend.upstream_tls)


class ClusterEntry(NamedTuple):
    """A served cluster: its encoding, its load assignment's (none for ExternalName), with the
    inputs each came from, and what it needs applied first. A tuple: 20,000 are made in a full
    translation at 10,000 Ingresses, and a frozen dataclass costs several times more to make."""

    cluster: tuple[tuple[object, ...], Encoded]
    assignment: tuple[tuple[object, ...], Encoded] | None
    needs: Refs


def cluster_entry(name: str, b: Backend, ca: Secret | None, slices: tuple[EndpointSlice, ...], cache: TranslationCache) -> ClusterEntry:
    """The cluster a Service's backend gives, reusing the cache's encodings whose inputs are equal."""
    ca_name = upstream_ca_name(b, ca)
    inputs = cluster_inputs(b, ca)
    cached = cache.clusters.get(name)
    if cached is None or not _same(cached[0], inputs):
        if b.service.type == "ExternalName":
            context = tls.upstream_context(ca_name, b.service.namespace, http2=b.http2) if ca_name else None
            cached = (inputs, encode(name, clusters.cluster(b.service, b.port, http2=b.http2, upstream_tls=context)))
        else:
            data = clusters.eds_cluster_data(name, _eds_settings(b.http2, ca_name, b.service.namespace if ca_name else ""))
            cached = (inputs, Encoded(name, data, content_version(data)))
    eds = [(ENDPOINT, name)] if b.service.type != "ExternalName" else []
    needs = refs(eds + ([(SECRET, ca_name)] if ca_name else []))
    if b.service.type == "ExternalName":
        return ClusterEntry(cached, None, needs)
    assignment = assignment_inputs(b, slices)
    known = cache.assignments.get(name)
    if known is None or not _same(known[0], assignment):
        data = clusters.load_assignment_data(b.service, b.port, slices)
        known = (assignment, Encoded(name, data, content_version(data)))
    return ClusterEntry(cached, known, needs)


@functools.lru_cache(maxsize=4096)
def _eds_settings(http2: bool, ca_name: str, namespace: str) -> bytes:
    """The bytes EDS clusters with these settings share (the namespace matters with a CA only)."""
    context = tls.upstream_context(ca_name, namespace, http2=http2) if ca_name else None
    return clusters.eds_settings(http2=http2, upstream_tls=context)


def upstream_ca_name(b: Backend, ca: Secret | None) -> str:
    """The CA secret a backend's cluster verifies its upstream with ("": plain)."""
    return tls.ca_secret_name(ca) if ca and b.upstream_tls else ""


def cluster_inputs(b: Backend, ca: Secret | None) -> tuple[object, ...]:
    """What a backend's cluster depends on (its cache entry's key)."""
    return (b.service, b.port, b.http2, upstream_ca_name(b, ca))


def assignment_inputs(b: Backend, slices: tuple[EndpointSlice, ...]) -> tuple[object, ...]:
    """What a backend's load assignment depends on (its cache entry's key)."""
    return (b.service, b.port, *slices)


def upstream_ca(world: World, gateway: GatewaySettings) -> tuple[Secret | None, str] | None:
    """With system-internal-tls: the routing CA Secret, or the problem with it. None when off."""
    if not world.network.system_internal_tls:
        return None
    ref = f"{gateway.system_namespace}/{ROUTING_CA_SECRET}"
    secret = world.secrets.get(ref)
    problem = tls.ca_problem(secret, ref)
    return (None, problem) if problem else (secret, "")


def backends_of(ingress: Ingress, services: Mapping[str, Service], *, internal_tls: bool) -> dict[str, Backend] | str:
    """The cluster each split needs, or the first problem found."""
    found: dict[str, Backend] = {}
    seen: set[int] = set()  # a path object its rules repeat (the parser shares them) gives the same backends again
    for i, rule in enumerate(ingress.rules):
        for j, path in enumerate(rule.paths):
            if id(path) in seen:
                continue
            seen.add(id(path))
            for k, split in enumerate(path.splits):
                service = services.get(f"{split.service_namespace}/{split.service_name}")
                if service is None:
                    return f"{_split_at(i, j, k)}.serviceName: Service {split.service_namespace}/{split.service_name} not found"
                port = service.port_for(split.service_port)
                if port is None:
                    return f"{_split_at(i, j, k)}.servicePort: Service {service.key} has no port {split.service_port!r}"
                name = names.cluster_name(service.namespace, service.name)
                # Upstream TLS never applies to rewritten hosts (hairpins through the gateway).
                upstream_tls = internal_tls and service.type != "ExternalName" and not path.rewrite_host
                # One cluster per Service (Kourier's naming): the first port referenced wins.
                backend = found.get(name)
                if backend is None:
                    found[name] = Backend(service, port, service.speaks_h2c and not ingress.disable_http2, upstream_tls)
                elif backend.upstream_tls and not upstream_tls:
                    found[name] = Backend(backend.service, backend.port, backend.http2, False)
    return found


def _unscopable(ingress: Ingress) -> str | None:
    """The field of the first host no scope key can match (a wildcard, or a rule without hosts)."""
    for i, rule in enumerate(ingress.rules):
        if not rule.hosts:
            return f"spec.rules[{i}].hosts: empty (every host)"
        for j, host in enumerate(rule.hosts):
            if scopes.unscopable(host):
                return f"spec.rules[{i}].hosts[{j}]: {host!r}"
    return None


def _split_at(rule: int, path: int, split: int) -> str:
    return f"spec.rules[{rule}].http.paths[{path}].splits[{split}]"
