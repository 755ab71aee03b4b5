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
from kxds.model.service import Service, ServicePort
from kxds.model.world import World
from kxds.settings import GatewaySettings
from kxds.translate import clusters, listeners, names, routes
from kxds.xds.type_urls import ENDPOINT

# Ingress outcome reasons (Kourier's where Kourier has one).
DOMAIN_CONFLICT = "DomainConflict"
BACKEND_NOT_FOUND = "BackendNotFound"
DOMAIN_CONFLICT_MESSAGE = "Ingress rejected: ingress has a conflicting domain with another ingress"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Whether an Ingress made it into the configuration, and if not, why."""

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


@dataclass(slots=True)
class _Backend:
    service: Service
    port: ServicePort
    http2: bool


def translate(world: World, gateway: GatewaySettings) -> GatewayConfig:
    outcomes: dict[str, Outcome] = {}
    backends: dict[str, _Backend] = {}
    external_vhosts: list[route_components_pb2.VirtualHost] = []
    internal_vhosts = [routes.status_vhost()]
    referenced: set[str] = set()
    claimed: dict[str, str] = {}
    # The older Ingress wins a host, then the smaller name: a restart can never flip ownership.
    for ingress in sorted(world.ingresses, key=lambda i: (i.creation_timestamp, i.namespace, i.name)):
        hosts = {h for rule in ingress.rules for h in (rule.hosts or ("*",))}
        if any(claimed.get(h, ingress.key) != ingress.key for h in hosts):
            outcomes[ingress.key] = Outcome(programmed=False, reason=DOMAIN_CONFLICT, message=DOMAIN_CONFLICT_MESSAGE)
            continue
        claimed.update(dict.fromkeys(hosts, ingress.key))
        problem = _resolve_backends(ingress, world.services, backends)
        if problem:
            outcomes[ingress.key] = Outcome(programmed=False, reason=BACKEND_NOT_FOUND, message=problem)
            continue
        vhosts = routes.ingress_virtual_hosts(ingress, redirects_disabled=gateway.http_option_disabled)
        external_vhosts.extend(vhosts.external)
        internal_vhosts.extend(vhosts.internal)
        referenced |= vhosts.clusters
        outcomes[ingress.key] = Outcome(programmed=True)

    route_configs = tuple(
        _route_config(name, vhosts) for name, vhosts in ((names.EXTERNAL_ROUTES, external_vhosts), (names.INTERNAL_ROUTES, internal_vhosts))
    )
    wanted = sorted((name, b) for name, b in backends.items() if name in referenced)
    return GatewayConfig(
        listeners=tuple(listeners.plain_listeners(gateway, world.kourier)),
        route_configs=route_configs,
        route_clusters={rc.name: frozenset(referenced) for rc in route_configs},
        clusters=tuple(clusters.cluster(b.service, b.port, http2=b.http2) for _, b in wanted),
        cluster_needs={name: frozenset({(ENDPOINT, name)}) for name, b in wanted if b.service.type != "ExternalName"},
        load_assignments=tuple(
            clusters.load_assignment(b.service, b.port, world.endpoint_slices.get(b.service.key, ()))
            for _, b in wanted
            if b.service.type != "ExternalName"
        ),
        outcomes=outcomes,
    )


def _resolve_backends(ingress: Ingress, services: Mapping[str, Service], backends: dict[str, _Backend]) -> str:
    """Record the cluster each split needs; the first problem found, or "" when all resolve."""
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
                # One cluster per Service (Kourier's naming): the first port referenced wins.
                found.setdefault(name, _Backend(service, port, service.speaks_h2c and not ingress.disable_http2))
    for name, backend in found.items():
        existing = backends.setdefault(name, backend)
        existing.http2 = existing.http2 and backend.http2
    return ""


def _route_config(name: str, vhosts: list[route_components_pb2.VirtualHost]) -> route_pb2.RouteConfiguration:
    # validate_clusters: Envoy rejects routes naming a cluster it lacks, instead of 503ing
    # them silently; kxds orders pushes so this never happens (xds-protocol.md §6.3).
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=sorted(vhosts, key=lambda v: v.name),
        validate_clusters=wrappers_pb2.BoolValue(value=True),
    )
