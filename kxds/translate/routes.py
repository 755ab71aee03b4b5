"""Ingress rules → Envoy virtual hosts and routes (knative-ingress-contract.md §9.3, §10.4–§10.6).

Vhosts come out encoded, assembled from the bytes of their parts: Knative repeats every path in an
Ingress's ExternalIP and ClusterLocal rules (the parser makes them one path object), and a probe
copy differs from its original by headers only, so each distinct piece is built once per Ingress.
Building route messages field by field was most of a cold translation at 10,000 Ingresses; the
bytes are the same as the messages' deterministic encoding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from kxds.model.ingress import HTTPOption, Ingress, Path, Split, Visibility
from kxds.translate import extensions, names
from kxds.resources import Encoded, content_version
from kxds.translate.encoded import encode, enum_field, field_head, length_delimited, serialized, string_field

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Field numbers for the byte assembly. Each message's fields are appended in field-number order,
# which is exactly its deterministic encoding (the asserts pin the order the code relies on;
# tests/unit/test_hostile_input.py checks every served resource is canonical).
_ROUTE_FIELDS = rc.Route.DESCRIPTOR.fields_by_name
# A route's name is the highest-numbered field kxds sets, so its bytes are the nameless body (what
# a probe copy and its original rules share) followed by the name.
_ROUTE_ACTION, _ROUTE_HEADERS, _ROUTE_NAME = (_ROUTE_FIELDS[f].number for f in ("route", "request_headers_to_add", "name"))
assert _ROUTE_FIELDS["match"].number < _ROUTE_ACTION < _ROUTE_FIELDS["redirect"].number < _ROUTE_HEADERS < _ROUTE_FIELDS["typed_per_filter_config"].number < _ROUTE_NAME
_ACTION_FIELDS = rc.RouteAction.DESCRIPTOR.fields_by_name
_ACTION_WEIGHTED, _ACTION_HOST_REWRITE = _ACTION_FIELDS["weighted_clusters"].number, _ACTION_FIELDS["host_rewrite_literal"].number
assert _ACTION_WEIGHTED < _ACTION_HOST_REWRITE < min(_ACTION_FIELDS[f].number for f in ("timeout", "upgrade_configs"))
_WEIGHTED_CLUSTERS = rc.WeightedCluster.DESCRIPTOR.fields_by_name["clusters"].number
_WEIGHT_FIELDS = rc.WeightedCluster.ClusterWeight.DESCRIPTOR.fields_by_name
_WEIGHT_NAME, _WEIGHT_HEADERS = _WEIGHT_FIELDS["name"].number, _WEIGHT_FIELDS["request_headers_to_add"].number
assert _WEIGHT_NAME < _WEIGHT_FIELDS["weight"].number < _WEIGHT_HEADERS
_OPTION_FIELDS = base_pb2.HeaderValueOption.DESCRIPTOR.fields_by_name
_OPTION_HEADER, _OPTION_ACTION = _OPTION_FIELDS["header"].number, _OPTION_FIELDS["append_action"].number
assert _OPTION_HEADER < _OPTION_FIELDS["append"].number < _OPTION_ACTION < _OPTION_FIELDS["keep_empty_value"].number
_OVERWRITE = enum_field(_OPTION_ACTION, OVERWRITE)
_HEADER_KEY, _HEADER_VALUE = (base_pb2.HeaderValue.DESCRIPTOR.fields_by_name[f].number for f in ("key", "value"))
assert _HEADER_KEY < _HEADER_VALUE < base_pb2.HeaderValue.DESCRIPTOR.fields_by_name["raw_value"].number
_VHOST_FIELDS = rc.VirtualHost.DESCRIPTOR.fields_by_name
# Name, domains, routes, then ext-authz's typed_per_filter_config.
_VHOST_NAME, _VHOST_DOMAINS, _VHOST_ROUTES = (_VHOST_FIELDS[f].number for f in ("name", "domains", "routes"))
assert _VHOST_NAME < _VHOST_DOMAINS < _VHOST_ROUTES < _VHOST_FIELDS["typed_per_filter_config"].number


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """A vhost as served, and the hosts its domains match (without their `host:*` forms)."""

    encoded: Encoded
    hosts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.encoded.name


@dataclass(frozen=True, slots=True)
class IngressVirtualHosts:
    external: tuple[VirtualHost, ...]  # ExternalIP rules
    internal: tuple[VirtualHost, ...]  # every rule: the private gateway serves them all
    cluster_local: tuple[VirtualHost, ...]  # ClusterLocal rules only
    clusters: frozenset[str]  # every cluster a route of this Ingress names


def _with(pairs: tuple[tuple[str, str], ...], name: str, value: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**dict(pairs), name: value}.items()))


def ingress_virtual_hosts(ingress: Ingress, *, tls: bool = False, redirects_disabled: bool = False, ext_authz: bool = False) -> IngressVirtualHosts:
    """The Ingress's vhosts; `tls` gives the copies for HTTPS listeners, which never redirect.
    With `ext_authz` on, each vhost tells the authorization service who it is (or opts out).

    Hosts whose routes come from the same rules share one vhost with all their domains (the three
    cluster-local forms of a Knative Service become one vhost): the route list is built and sent
    once instead of once per host.
    """
    bodies = _RouteBodies(ingress.hash, ext_authz)
    # Per rule: (prefix length, route bytes), every path's probe copy ahead of the originals.
    rule_routes: list[list[tuple[int, bytes]]] = []
    contributions: dict[str, dict[str, list[int]]] = {"external": {}, "internal": {}, "cluster_local": {}}
    clusters: set[str] = set()
    redirect = ingress.http_option is HTTPOption.REDIRECTED and not redirects_disabled and not tls
    for index, rule in enumerate(ingress.rules):
        hosts = rule.hosts or ("*",)
        is_external = rule.visibility is Visibility.EXTERNAL_IP
        redirected = redirect and is_external
        built = [(len(p.path or "/"), bodies.of(p, redirected), _route_name(ingress.key, hosts[0], p.path)) for p in rule.paths]
        rule_routes.append([(length, pair[copy] + name) for copy in (0, 1) for length, pair, name in built])
        if not redirected:
            clusters.update(names.cluster_name(s.service_namespace, s.service_name) for p in rule.paths for s in p.splits)
        for host in hosts:
            contributions["internal"].setdefault(host, []).append(index)
            contributions["external" if is_external else "cluster_local"].setdefault(host, []).append(index)
    filters = _VhostFilters(ingress) if ext_authz else None
    # The private gateway's vhosts are the public and cluster-local ones again: each built once.
    made: dict[tuple[tuple[int, ...], tuple[str, ...]], VirtualHost] = {}
    vhosts = {kind: _grouped(ingress.key, hosts, rule_routes, filters, made) for kind, hosts in contributions.items()}
    return IngressVirtualHosts(
        external=vhosts["external"], internal=vhosts["internal"], cluster_local=vhosts["cluster_local"], clusters=frozenset(clusters)
    )


class _RouteBodies:
    """An Ingress's routes without their names, (probe copy, original) per path object: the parser
    makes a path its rules repeat one object, and identity costs nothing to hash (a path's hash
    walks all its splits and headers). Lives for one translation of one Ingress, which holds the paths."""

    def __init__(self, digest: str, ext_authz: bool) -> None:
        self._digest, self._ext_authz = digest, ext_authz
        self._built: dict[tuple[int, bool], tuple[bytes, bytes]] = {}

    def of(self, path: Path, redirected: bool) -> tuple[bytes, bytes]:
        built = self._built.get((id(path), redirected))
        if built is None:
            # Field order: match, route | redirect, request_headers_to_add, typed_per_filter_config.
            opt_out = _acme_opt_out() if self._ext_authz and path.path.startswith(extensions.ACME_CHALLENGE_PREFIX) else b""
            # Knative's InsertProbe: a copy matching `K-Network-Hash: override` answers the hash.
            prefix = path.path or "/"
            probe_match = _match(prefix, _with(path.headers, names.PROBE_HASH_HEADER, names.PROBE_OVERRIDE))
            if redirected:
                built = (probe_match + _REDIRECT + opt_out, _match(prefix, path.headers) + _REDIRECT + opt_out)
            else:
                action = _forward_action(path)
                built = (
                    probe_match + action + _route_headers(_with(path.append_headers, names.PROBE_HASH_HEADER, self._digest)) + opt_out,
                    _match(prefix, path.headers) + action + _route_headers(path.append_headers) + opt_out,
                )
            self._built[(id(path), redirected)] = built
        return built


class _VhostFilters:
    """A vhost's ext-authz settings (its `typed_per_filter_config` bytes): the visibility of the first
    rule naming its first host, the Ingress's labels, or opted out."""

    def __init__(self, ingress: Ingress) -> None:
        self._ingress = ingress
        self._first_rule = {h: rule for rule in reversed(ingress.rules) for h in (rule.hosts or ("*",))}

    def of(self, host: str) -> bytes:
        if self._ingress.disable_ext_authz:
            return _vhost_ext_authz("", ())
        return _vhost_ext_authz(self._first_rule[host].visibility.value, self._ingress.labels)


def _grouped(ingress_key: str, contributions: dict[str, list[int]], rule_routes: list[list[tuple[int, bytes]]],
             filters: _VhostFilters | None, made: dict[tuple[tuple[int, ...], tuple[str, ...]], VirtualHost]) -> tuple[VirtualHost, ...]:
    """One vhost per set of hosts sharing the same rules; `made` holds the vhosts built so far
    for this Ingress (a vhost depends only on its hosts and their rules)."""
    by_rules: dict[tuple[int, ...], list[str]] = {}
    for host, rules in contributions.items():
        by_rules.setdefault(tuple(rules), []).append(host)
    out = []
    for indexes, hosts in by_rules.items():
        ordered = tuple(sorted(hosts))
        vhost = made.get((indexes, ordered))
        if vhost is None:
            tail = filters.of(ordered[0]) if filters is not None else b""
            vhost = made[(indexes, ordered)] = _vhost(ingress_key, ordered, [r for i in indexes for r in rule_routes[i]], tail)
        out.append(vhost)
    return tuple(sorted(out, key=lambda v: v.name))


def _vhost(ingress_key: str, hosts: tuple[str, ...], routes: list[tuple[int, bytes]], tail: bytes) -> VirtualHost:
    # Longest prefix first; the sort is stable, so each probe copy stays ahead of its original.
    ordered = sorted(routes, key=lambda r: -r[0])
    # `host:*` matches an authority that carries a port, as gRPC clients send (envoy#886).
    domains = [d for host in hosts for d in (host, f"{host}:*")]
    name = names.vhost_name(ingress_key, hosts[0])
    parts = [length_delimited(_VHOST_NAME, name.encode()), *(length_delimited(_VHOST_DOMAINS, d.encode()) for d in domains)]
    for _, route in ordered:
        parts += (field_head(_VHOST_ROUTES, len(route)), route)
    parts.append(tail)
    data = b"".join(parts)
    return VirtualHost(Encoded(name, data, content_version(data)), hosts)


def _route_name(ingress_key: str, host: str, path: str) -> bytes:
    return length_delimited(_ROUTE_NAME, names.route_name(ingress_key, host, path).encode())


@functools.lru_cache(maxsize=4096)  # Knative's matches repeat across Ingresses: "/", the probe and tag headers
def _match(prefix: str, pairs: tuple[tuple[str, str], ...]) -> bytes:
    headers = [
        rc.HeaderMatcher(name=n, string_match=string_pb2.StringMatcher(exact=v))
        if v
        else rc.HeaderMatcher(name=n, present_match=True)
        for n, v in pairs
    ]
    return serialized(rc.Route(match=rc.RouteMatch(prefix=prefix, headers=headers)))


def _route_headers(pairs: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(length_delimited(_ROUTE_HEADERS, _header_option(k, v)) for k, v in pairs)


@functools.lru_cache(maxsize=1024)  # Knative's names and tags repeat; a revision's name or a probe hash does not
def _header_option(key: str, value: str) -> bytes:
    """A HeaderValueOption's bytes (header, then append_action), written directly: building the
    message costs several times more, and most values are met once (tests pin the bytes)."""
    # Knative's appendHeaders *set* the header: a client-sent value is replaced (serving#6366).
    # Envoy reads `%` in added header values as a formatter command (%REQ(...)% and the like) and
    # rejects the whole route configuration on a lone one: a literal % is written %%.
    header = string_field(_HEADER_KEY, key) + string_field(_HEADER_VALUE, value.replace("%", "%%"))
    return length_delimited(_OPTION_HEADER, header) + _OVERWRITE


def _forward_action(path: Path) -> bytes:
    """The route's action as its bytes (field-number order: weighted clusters, host rewrite,
    timeout, upgrades): the split, no timeout (0s disables Envoy's 15 s default) and no retry
    policy — conformance `timeout` and `retry` require both; a legacy per-path timeout is honoured."""
    weighted = b"".join(length_delimited(_WEIGHTED_CLUSTERS, _cluster_weight(s)) for s in path.splits)
    action = length_delimited(_ACTION_WEIGHTED, weighted)
    if path.rewrite_host:
        action += length_delimited(_ACTION_HOST_REWRITE, path.rewrite_host.encode())
    action += _timeout_and_upgrades(path.timeout_seconds or 0.0)
    return length_delimited(_ROUTE_ACTION, action)


def _cluster_weight(split: Split) -> bytes:
    name = length_delimited(_WEIGHT_NAME, names.cluster_name(split.service_namespace, split.service_name).encode())
    return name + _weight(split.percent) + b"".join(length_delimited(_WEIGHT_HEADERS, _header_option(k, v)) for k, v in split.append_headers)


@functools.cache
def _weight(percent: int) -> bytes:
    return serialized(rc.WeightedCluster.ClusterWeight(weight=wrappers_pb2.UInt32Value(value=percent)))


@functools.lru_cache(maxsize=64)
def _timeout_and_upgrades(seconds: float) -> bytes:
    timeout = duration_pb2.Duration()
    if seconds:
        timeout.FromNanoseconds(round(seconds * 1e9))
    upgrade = rc.RouteAction.UpgradeConfig(upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True))
    return serialized(rc.RouteAction(timeout=timeout, upgrade_configs=[upgrade]))


_REDIRECT = serialized(rc.Route(redirect=rc.RedirectAction(https_redirect=True)))


@functools.cache
def _acme_opt_out() -> bytes:
    route = rc.Route()
    route.typed_per_filter_config[extensions.EXT_AUTHZ_FILTER].CopyFrom(extensions.ext_authz_disabled())
    return serialized(route)


@functools.lru_cache(maxsize=1024)
def _vhost_ext_authz(visibility: str, labels: tuple[tuple[str, str], ...]) -> bytes:
    """A vhost's ext-authz `typed_per_filter_config`: the context for `visibility`, or opted out ("")."""
    config = extensions.ext_authz_context(visibility, labels) if visibility else extensions.ext_authz_disabled()
    vhost = rc.VirtualHost()
    vhost.typed_per_filter_config[extensions.EXT_AUTHZ_FILTER].CopyFrom(config)
    return serialized(vhost)


@functools.cache
def status_vhost(ext_authz: bool = False) -> VirtualHost:
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
    return VirtualHost(encode(names.STATUS_VHOST, vhost), (names.STATUS_VHOST,))

