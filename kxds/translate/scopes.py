"""The scoped route layout: one route configuration per Ingress and listener, chosen by host.

Kourier's layout puts every vhost in two route configurations, so Envoy re-applies all of them
(tens of megabytes at 10,000 Ingresses) on any change. Here the plain HTTP listeners use scoped
routes (SRDS): a scope maps (listener, host) to the route configuration of the Ingress owning the
host, and an Ingress change re-sends only its own route configurations.

Every scope travels to every listener (Envoy subscribes to SRDS as a wildcard), so the key has two
fragments: a header the listener sets before routing (early header mutation, overwriting anything a
client sent) and the host, lower-cased, without its port, which the first HTTP filter (a few lines of
Lua) writes into a header of its own: hosts match case-insensitively (RFC 9110 §4.2.3), as Envoy's
vhost domains do in Kourier's layout, and a scope key is an exact string. Envoy picks the scope
again once a filter changed the request's headers, so the key it routes by is the filter's. Both
headers are removed before going upstream.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, extension_pb2
from envoy.config.route.v3 import scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2

from kxds.translate.clusters import packed
from kxds.resources import Encoded, content_version
from kxds.translate.encoded import RouteTable, length_delimited
from kxds.resources import ROUTE, Refs

# Set by the listener on every request (never trusted from the client), read by the scope key.
LISTENER_HEADER = "x-kxds-listener"
# Set by the host-folding filter on every request (never trusted from the client), read by the scope key.
HOST_HEADER = "x-kxds-host"
EARLY_HEADER_MUTATION = "envoy.http.early_header_mutation.header_mutation"
LUA_FILTER = "envoy.filters.http.lua"
# `[v6]:port` keeps its brackets; `host:port` loses the port.
_FOLD_HOST = f"""function envoy_on_request(request)
  local authority = request:headers():get(":authority") or ""
  local host = string.match(authority, "^%[[^%]]*%]") or string.match(authority, "^[^:]*")
  request:headers():replace("{HOST_HEADER}", string.lower(host))
end
"""

Fragment = hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder


def route_config_name(table: str, owner: str) -> str:
    """`external_services/<namespace>/<name>`: one Ingress's share of a Kourier route table
    (interned, as cluster names are: scopes, the snapshot and subscriptions all hold it)."""
    return sys.intern(f"{table}/{owner}")


def scope_name(table: str, host: str) -> str:
    return f"{table}/{host}"


def unscopable(host: str) -> bool:
    """A host no exact scope key can match: a rule without hosts, or a wildcard domain."""
    return host == "*" or host.startswith("*.")


def scoped_routes(table: str, source: config_source_pb2.ConfigSource) -> hcm_pb2.ScopedRoutes:
    """The connection manager's routing: scopes over SRDS, their route configurations over RDS,
    both from `source` (ADS)."""
    header = Fragment.HeaderValueExtractor
    builder = hcm_pb2.ScopedRoutes.ScopeKeyBuilder(
        fragments=[
            Fragment(header_value_extractor=header(name=LISTENER_HEADER, index=0)),
            Fragment(header_value_extractor=header(name=HOST_HEADER, index=0)),
        ]
    )
    return hcm_pb2.ScopedRoutes(
        name=table,
        scope_key_builder=builder,
        rds_config_source=source,
        scoped_rds=hcm_pb2.ScopedRds(scoped_rds_config_source=source),
    )


def listener_mark(table: str) -> extension_pb2.TypedExtensionConfig:
    """The early header mutation naming the listener's route table, applied before routing."""
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=[
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=LISTENER_HEADER, value=table),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )
        ]
    )
    return extension_pb2.TypedExtensionConfig(name=EARLY_HEADER_MUTATION, typed_config=packed(mutation))


def host_folding_filter() -> hcm_pb2.HttpFilter:
    """The first HTTP filter of a scoped listener: the scope key's host, lower-cased."""
    lua = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=_FOLD_HOST))
    return hcm_pb2.HttpFilter(name=LUA_FILTER, typed_config=packed(lua))


def table(table_name: str, owner: str, vhosts: Iterable[Encoded]) -> RouteTable:
    return RouteTable.of(route_config_name(table_name, owner), vhosts, remove_headers=(LISTENER_HEADER, HOST_HEADER))


# A scope with what a gateway asks for once it holds it: the route configuration it names.
Scope = tuple[Encoded, Refs]


def scopes(table_name: str, owner: str, hosts: Iterable[str]) -> tuple[Scope, ...]:
    """One scope per host, all naming the owner's route configuration for this table."""
    route_config = route_config_name(table_name, owner)
    asks: Refs = ((ROUTE, route_config),)
    # 50,000 scopes at 10,000 Ingresses: written as bytes (name, route configuration, key).
    middle = length_delimited(_ROUTE_CONFIGURATION, route_config.encode())
    table_fragment = _fragment(table_name)
    out = []
    for host in sorted(set(hosts)):
        name = scope_name(table_name, host)
        key = length_delimited(_KEY, table_fragment + _fragment(host))
        data = length_delimited(_NAME, name.encode()) + middle + key
        out.append((Encoded(name, data, content_version(data)), asks))
    return tuple(out)


_SCOPE_FIELDS = scoped_route_pb2.ScopedRouteConfiguration.DESCRIPTOR.fields_by_name
_NAME, _ROUTE_CONFIGURATION, _KEY = (_SCOPE_FIELDS[f].number for f in ("name", "route_configuration_name", "key"))
_FRAGMENTS = scoped_route_pb2.ScopedRouteConfiguration.Key.DESCRIPTOR.fields_by_name["fragments"].number
_STRING_KEY = scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment.DESCRIPTOR.fields_by_name["string_key"].number


def _fragment(value: str) -> bytes:
    return length_delimited(_FRAGMENTS, length_delimited(_STRING_KEY, value.encode()))
