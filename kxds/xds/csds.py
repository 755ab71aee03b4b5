"""Client Status Discovery Service (envoy.service.status.v3): what each connected gateway holds,
as this control plane knows it from the ACKs and NACKs of its stream, for standard xDS tools.

Every resource a gateway has acknowledged is reported with its version and body (a Secret with
its version only: no key material ever leaves through CSDS); resources of
the current snapshot it has not applied yet are NOT_SENT or STALE, and a NACKed type carries the
rejection as error_state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2

from kxds.xds.fleet import Gateway
from kxds.xds.snapshot import Snapshot
from kxds.xds.stream import TypeState
from kxds.resources import SECRET

GenericXdsConfig: Any = csds_pb2.ClientConfig.GenericXdsConfig


def client_status(gateways: Iterable[Gateway], snapshot: Snapshot, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
    response = csds_pb2.ClientStatusResponse()
    for gateway in gateways:
        node = gateway.stream.node
        if node is None or not _matches(request.node_matchers, node.id):
            continue
        config = response.config.add(node=node, client_scope=f"gateway-{gateway.id}")
        for type_url, state in sorted(gateway.stream.types.items()):
            # A Secret is shown by name and version only: its body holds a private key.
            bodies = not request.exclude_resource_contents and type_url != SECRET
            config.generic_xds_configs.extend(_type_configs(type_url, state, snapshot, with_bodies=bodies))
    return response


def _type_configs(type_url: str, state: TypeState, snapshot: Snapshot, *, with_bodies: bool) -> list[GenericXdsConfig]:
    current = snapshot.of_type(type_url)
    held = state.acked_resources
    error = None
    if state.rejected_version is not None:
        error = dump_pb2.UpdateFailureState(details=state.last_error, version_info=state.rejected_version)
    out = []
    for name, resource in sorted(held.items()):
        latest = current.get(name)
        entry = GenericXdsConfig(
            type_url=type_url,
            name=name,
            version_info=resource.version,
            client_status=dump_pb2.ACKED,
            config_status=csds_pb2.SYNCED if latest is not None and latest.version == resource.version else csds_pb2.STALE,
        )
        if with_bodies:
            entry.xds_config.CopyFrom(resource.body)
        if error is not None and entry.config_status == csds_pb2.STALE:
            entry.config_status, entry.client_status = csds_pb2.ERROR, dump_pb2.NACKED
            entry.error_state.CopyFrom(error)
        out.append(entry)
    wanted = current if state.wildcard else {n: current[n] for n in state.names if n in current}
    for name, resource in sorted(wanted.items()):
        if name in held:
            continue
        entry = GenericXdsConfig(type_url=type_url, name=name, version_info=resource.version, config_status=csds_pb2.NOT_SENT)
        entry.client_status = dump_pb2.NACKED if error is not None else dump_pb2.REQUESTED
        if error is not None:
            entry.config_status = csds_pb2.ERROR
            entry.error_state.CopyFrom(error)
        out.append(entry)
    return out


def _matches(matchers: Iterable[node_pb2.NodeMatcher], node_id: str) -> bool:
    """No matcher: every node. Otherwise any matcher whose node_id pattern matches."""
    matchers = list(matchers)
    return not matchers or any(not m.HasField("node_id") or _string_matches(m.node_id, node_id) for m in matchers)


def _string_matches(matcher: string_pb2.StringMatcher, value: str) -> bool:
    match matcher.WhichOneof("match_pattern"):
        case "exact":
            return value == str(matcher.exact)
        case "prefix":
            return value.startswith(str(matcher.prefix))
        case "suffix":
            return value.endswith(str(matcher.suffix))
        case "contains":
            return str(matcher.contains) in value
    return False
