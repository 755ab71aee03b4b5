"""The whole gateway configuration from the whole world: the translator's entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as tls_pb2
from google.protobuf import wrappers_pb2

from kxds.model.ingress import Ingress
from kxds.model.secret import Secret
from kxds.model.service import Service, ServicePort
from kxds.model.world import World
from kxds.settings import GatewaySettings
from kxds.translate import clusters, listeners, names, routes, tls
from kxds.translate.https import HttpsPlan
from kxds.xds.type_urls import ENDPOINT, SECRET

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


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    listeners: tuple[listener_pb2.Listener, ...] = ()
    route_configs: tuple[route_pb2.RouteConfiguration, ...] = ()
    # Route configuration name → the dynamic clusters its routes name (for make-before-break).
    route_clusters: Mapping[str, frozenset[str]] = field(default_factory=dict)
    clusters: tuple[cluster_pb2.Cluster, ...] = ()
    # Cluster name → (type URL, name) of what it needs first: its EDS assignment, its CA secret.
    cluster_needs: Mapping[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    load_assignments: tuple[endpoint_pb2.ClusterLoadAssignment, ...] = ()
    secrets: tuple[tls_pb2.Secret, ...] = ()
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    # Problems with gateway-wide settings (default certificates), logged by the controller.
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class _Backend:
    service: Service
    port: ServicePort
    http2: bool
    upstream_tls: bool


def translate(world: World, gateway: GatewaySettings) -> GatewayConfig:
    plan = _Plan(world, gateway)
    # The older Ingress wins a host, then the smaller name: a restart can never flip ownership.
    for ingress in sorted(world.ingresses, key=lambda i: (i.creation_timestamp, i.namespace, i.name)):
        try:
            plan.outcomes[ingress.key] = plan.add(ingress)
        except Exception as exc:  # a translator bug hit by one Ingress must not take the others down
            message = f"internal error translating this Ingress: {exc!r}"
            plan.outcomes[ingress.key] = Outcome(programmed=False, reason=RECONCILE_FAILED, message=message)
    return plan.build()


class _Plan:
    """The configuration being assembled, one Ingress at a time."""

    def __init__(self, world: World, gateway: GatewaySettings) -> None:
        self.world, self.gateway = world, gateway
        self.outcomes: dict[str, Outcome] = {}
        self.backends: dict[str, _Backend] = {}
        self.external_vhosts: list[route_components_pb2.VirtualHost] = []
        self.internal_vhosts = [routes.status_vhost()]
        self.referenced: set[str] = set()
        self.claimed: dict[str, str] = {}
        self.https = HttpsPlan(world.secrets, world.kourier, gateway)
        self.upstream_ca = _upstream_ca(world, gateway)

    def add(self, ingress: Ingress) -> Outcome:
        hosts = {h for rule in ingress.rules for h in (rule.hosts or ("*",))}
        if any(self.claimed.get(h, ingress.key) != ingress.key for h in hosts):
            return Outcome(programmed=False, reason=DOMAIN_CONFLICT, message=DOMAIN_CONFLICT_MESSAGE)
        self.claimed.update(dict.fromkeys(hosts, ingress.key))
        found = _backends_of(ingress, self.world.services, internal_tls=self.upstream_ca is not None)
        if isinstance(found, str):
            return Outcome(programmed=False, reason=BACKEND_NOT_FOUND, message=found)
        if self.upstream_ca is not None and self.upstream_ca[1] and any(b.upstream_tls for b in found.values()):
            return Outcome(programmed=False, reason=RECONCILE_FAILED, message=f"system-internal-tls is enabled but {self.upstream_ca[1]}")
        for name, backend in found.items():
            existing = self.backends.setdefault(name, backend)
            existing.http2 = existing.http2 and backend.http2
            existing.upstream_tls = existing.upstream_tls and backend.upstream_tls
        vhosts = routes.ingress_virtual_hosts(ingress, redirects_disabled=self.gateway.http_option_disabled)
        self.external_vhosts.extend(vhosts.external)
        self.internal_vhosts.extend(vhosts.internal)
        self.referenced |= vhosts.clusters
        # A broken certificate takes out the Ingress's HTTPS only; plain HTTP keeps being served.
        problem = self.https.add(ingress, self.gateway.http_option_disabled)
        return Outcome(programmed=True, reason=RECONCILE_FAILED if problem else "", message=problem)

    def build(self) -> GatewayConfig:
        world, https = self.world, self.https
        referenced = self.referenced | https.clusters
        route_vhosts = {names.EXTERNAL_ROUTES: self.external_vhosts, names.INTERNAL_ROUTES: self.internal_vhosts, **https.route_config_vhosts()}
        route_configs = tuple(_route_config(name, vhosts) for name, vhosts in route_vhosts.items())
        wanted = sorted((name, b) for name, b in self.backends.items() if name in referenced)
        ca = self.upstream_ca[0] if self.upstream_ca is not None else None
        needs: dict[str, frozenset[tuple[str, str]]] = {}
        built = []
        for name, b in wanted:
            context = tls.upstream_context(tls.ca_secret_name(ca), b.service.namespace, http2=b.http2) if ca and b.upstream_tls else None
            built.append(clusters.cluster(b.service, b.port, http2=b.http2, upstream_tls=context))
            eds = [(ENDPOINT, name)] if b.service.type != "ExternalName" else []
            needs[name] = frozenset(eds + ([(SECRET, tls.ca_secret_name(ca))] if ca and context else []))
        secrets = https.secrets() + ([tls.ca_secret(ca)] if ca and any(b.upstream_tls for _, b in wanted) else [])
        return GatewayConfig(
            listeners=tuple(listeners.plain_listeners(self.gateway, world.kourier) + https.listeners()),
            route_configs=route_configs,
            route_clusters={rc.name: frozenset(referenced) for rc in route_configs},
            clusters=tuple(built),
            cluster_needs=needs,
            load_assignments=tuple(
                clusters.load_assignment(b.service, b.port, world.endpoint_slices.get(b.service.key, ()))
                for _, b in wanted
                if b.service.type != "ExternalName"
            ),
            secrets=tuple(secrets),
            outcomes=self.outcomes,
            problems=tuple(https.problems),
        )


def _upstream_ca(world: World, gateway: GatewaySettings) -> tuple[Secret | None, str] | None:
    """With system-internal-tls: the routing CA Secret, or the problem with it. None when off."""
    if not world.network.system_internal_tls:
        return None
    ref = f"{gateway.system_namespace}/{ROUTING_CA_SECRET}"
    secret = world.secrets.get(ref)
    problem = tls.ca_problem(secret, ref)
    return (None, problem) if problem else (secret, "")


def _backends_of(ingress: Ingress, services: Mapping[str, Service], *, internal_tls: bool) -> dict[str, _Backend] | str:
    """The cluster each split needs, or the first problem found."""
    found: dict[str, _Backend] = {}
    for i, rule in enumerate(ingress.rules):
        for j, path in enumerate(rule.paths):
            for k, split in enumerate(path.splits):
                at = f"spec.rules[{i}].http.paths[{j}].splits[{k}]"
                service = services.get(f"{split.service_namespace}/{split.service_name}")
                if service is None:
                    return f"{at}.serviceName: Service {split.service_namespace}/{split.service_name} not found"
                port = service.port_for(split.service_port)
                if port is None:
                    return f"{at}.servicePort: Service {service.key} has no port {split.service_port!r}"
                name = names.cluster_name(service.namespace, service.name)
                # Upstream TLS never applies to rewritten hosts (hairpins through the gateway).
                upstream_tls = internal_tls and service.type != "ExternalName" and not path.rewrite_host
                # One cluster per Service (Kourier's naming): the first port referenced wins.
                backend = found.setdefault(name, _Backend(service, port, service.speaks_h2c and not ingress.disable_http2, upstream_tls))
                backend.upstream_tls = backend.upstream_tls and upstream_tls
    return found


def _route_config(name: str, vhosts: list[route_components_pb2.VirtualHost]) -> route_pb2.RouteConfiguration:
    # validate_clusters: Envoy rejects routes naming a cluster it lacks, instead of 503ing
    # them silently; kxds orders pushes so this never happens (xds-protocol.md §6.3).
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=sorted(vhosts, key=lambda v: v.name),
        validate_clusters=wrappers_pb2.BoolValue(value=True),
    )
