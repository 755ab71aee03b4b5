"""Ingress rules → Envoy virtual hosts and routes (knative-ingress-contract.md §9.3, §10.4–§10.6)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from kxds.model.ingress import HTTPOption, Ingress, Path, Visibility
from kxds.translate import extensions, names

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True, slots=True)
class IngressVirtualHosts:
    external: tuple[rc.VirtualHost, ...]  # ExternalIP rules
    internal: tuple[rc.VirtualHost, ...]  # every rule: the private gateway serves them all
    cluster_local: tuple[rc.VirtualHost, ...]  # ClusterLocal rules only
    clusters: frozenset[str]  # every cluster a route of this Ingress names


def with_probe_paths(paths: Iterable[Path], digest: str) -> list[Path]:
    """Knative's InsertProbe: a copy of every path matching `K-Network-Hash: override`, prepended."""
    originals = list(paths)
    probes = [
        replace(
            p,
            headers=tuple(sorted({**dict(p.headers), names.PROBE_HASH_HEADER: names.PROBE_OVERRIDE}.items())),
            append_headers=tuple(sorted({**dict(p.append_headers), names.PROBE_HASH_HEADER: digest}.items())),
        )
        for p in originals
    ]
    return probes + originals


def ingress_virtual_hosts(ingress: Ingress, *, tls: bool = False, redirects_disabled: bool = False, ext_authz: bool = False) -> IngressVirtualHosts:
    """The Ingress's vhosts; `tls` gives the copies for HTTPS listeners, which never redirect.
    With `ext_authz` on, each vhost tells the authorization service who it is (or opts out).

    Hosts whose routes come from the same rules share one vhost with all their domains (the three
    cluster-local forms of a Knative Service become one vhost): the route list is built and sent
    once instead of once per host.
    """
    rule_routes: list[list[rc.Route]] = []
    contributions: dict[str, dict[str, list[int]]] = {"external": {}, "internal": {}, "cluster_local": {}}
    clusters: set[str] = set()
    redirect = ingress.http_option is HTTPOption.REDIRECTED and not redirects_disabled and not tls
    for index, rule in enumerate(ingress.rules):
        hosts = rule.hosts or ("*",)
        is_external = rule.visibility is Visibility.EXTERNAL_IP
        routes = []
        for path in with_probe_paths(rule.paths, ingress.hash):
            name = names.route_name(ingress.key, hosts[0], path.path)
            if redirect and is_external:
                route = _redirect_route(name, path)
            else:
                route = _forward_route(name, path)
                clusters.update(names.cluster_name(s.service_namespace, s.service_name) for s in path.splits)
            if ext_authz and path.path.startswith(extensions.ACME_CHALLENGE_PREFIX):
                route.typed_per_filter_config[extensions.EXT_AUTHZ_FILTER].CopyFrom(extensions.ext_authz_disabled())
            routes.append(route)
        rule_routes.append(routes)
        for host in hosts:
            contributions["internal"].setdefault(host, []).append(index)
            contributions["external" if is_external else "cluster_local"].setdefault(host, []).append(index)
    vhosts = {kind: _grouped(ingress.key, hosts, rule_routes) for kind, hosts in contributions.items()}
    if ext_authz:
        first_rule = {h: i for i, rule in reversed(list(enumerate(ingress.rules))) for h in (rule.hosts or ("*",))}
        for vhost in (v for group in vhosts.values() for v in group):
            visibility = ingress.rules[first_rule[vhost.domains[0]]].visibility.value
            config = extensions.ext_authz_disabled() if ingress.disable_ext_authz else extensions.ext_authz_context(visibility, ingress.labels)
            vhost.typed_per_filter_config[extensions.EXT_AUTHZ_FILTER].CopyFrom(config)
    return IngressVirtualHosts(
        external=vhosts["external"], internal=vhosts["internal"], cluster_local=vhosts["cluster_local"], clusters=frozenset(clusters)
    )


def _grouped(ingress_key: str, contributions: dict[str, list[int]], rule_routes: list[list[rc.Route]]) -> tuple[rc.VirtualHost, ...]:
    by_rules: dict[tuple[int, ...], list[str]] = {}
    for host, rules in contributions.items():
        by_rules.setdefault(tuple(rules), []).append(host)
    out = [_vhost(ingress_key, sorted(hosts), [r for i in rules for r in rule_routes[i]]) for rules, hosts in by_rules.items()]
    return tuple(sorted(out, key=lambda v: v.name))


def _vhost(ingress_key: str, hosts: list[str], routes: list[rc.Route]) -> rc.VirtualHost:
    # Longest prefix first; the sort is stable, so each probe copy stays ahead of its original.
    ordered = sorted(routes, key=lambda r: -len(r.match.prefix))
    # `host:*` matches an authority that carries a port, as gRPC clients send (envoy#886).
    domains = [d for host in hosts for d in (host, f"{host}:*")]
    return rc.VirtualHost(name=names.vhost_name(ingress_key, hosts[0]), domains=domains, routes=ordered)


def _match(path: Path) -> rc.RouteMatch:
    headers = [
        rc.HeaderMatcher(name=n, string_match=string_pb2.StringMatcher(exact=v))
        if v
        else rc.HeaderMatcher(name=n, present_match=True)
        for n, v in path.headers
    ]
    return rc.RouteMatch(prefix=path.path or "/", headers=headers)


@functools.lru_cache(maxsize=4096)  # an Ingress's rules and probe copies repeat the same headers
def _header_options(pairs: tuple[tuple[str, str], ...]) -> tuple[base_pb2.HeaderValueOption, ...]:
    # Knative's appendHeaders *set* the header: a client-sent value is replaced (serving#6366).
    # Envoy reads `%` in added header values as a formatter command (%REQ(...)% and the like) and
    # rejects the whole route configuration on a lone one: a literal % is written %%.
    return tuple(
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v.replace("%", "%%")), append_action=OVERWRITE)
        for k, v in pairs
    )


def _forward_route(name: str, path: Path) -> rc.Route:
    weighted = rc.WeightedCluster(
        clusters=[
            rc.WeightedCluster.ClusterWeight(
                name=names.cluster_name(s.service_namespace, s.service_name),
                weight=wrappers_pb2.UInt32Value(value=s.percent),
                request_headers_to_add=_header_options(s.append_headers),
            )
            for s in path.splits
        ]
    )
    # No timeout (0s disables Envoy's 15 s default) and no retry policy: conformance
    # `timeout` and `retry` require both. A legacy per-path timeout is honoured.
    timeout = duration_pb2.Duration()
    if path.timeout_seconds:
        timeout.FromNanoseconds(round(path.timeout_seconds * 1e9))
    action = rc.RouteAction(
        weighted_clusters=weighted,
        timeout=timeout,
        upgrade_configs=[rc.RouteAction.UpgradeConfig(upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True))],
    )
    if path.rewrite_host:
        action.host_rewrite_literal = path.rewrite_host
    return rc.Route(name=name, match=_match(path), route=action, request_headers_to_add=_header_options(path.append_headers))


def _redirect_route(name: str, path: Path) -> rc.Route:
    return rc.Route(name=name, match=_match(path), redirect=rc.RedirectAction(https_redirect=True))


def status_vhost(ext_authz: bool = False) -> rc.VirtualHost:
    """`internalkourier` /ready → Envoy admin: what the gateway's kubelet probes call (never
    behind ext-authz: a down authorization service must not fail the gateway's own probes)."""
    timeout = duration_pb2.Duration(seconds=1)
    route = rc.Route(
        name="gateway_ready",
        match=rc.RouteMatch(prefix="/ready"),
        route=rc.RouteAction(
            weighted_clusters=rc.WeightedCluster(
                clusters=[rc.WeightedCluster.ClusterWeight(name=names.STATS_CLUSTER, weight=wrappers_pb2.UInt32Value(value=100))]
            ),
            timeout=timeout,
        ),
    )
    vhost = rc.VirtualHost(name=names.STATUS_VHOST, domains=[names.STATUS_VHOST], routes=[route])
    if ext_authz:
        vhost.typed_per_filter_config[extensions.EXT_AUTHZ_FILTER].CopyFrom(extensions.ext_authz_disabled())
    return vhost
