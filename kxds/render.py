"""`kxds render`: the resources a source directory would produce, as JSON, for debugging."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import scoped_route_pb2
from google.protobuf import json_format, message

from kxds.controller import build_world
from kxds.model.objects import Filters, ObjectKey, Parsed
from kxds.settings import GatewaySettings
from kxds.sources.files import FileSource
from kxds.translate.gateway import translate
from kxds.resources import SCOPED_ROUTE


def render(source: Path, gateway: GatewaySettings, ingress_class: str, system_namespace: str) -> dict[str, Any]:
    objects: dict[ObjectKey, Parsed] = {}

    def collect(upserts: Mapping[ObjectKey, Parsed], deletes: Iterable[ObjectKey]) -> None:
        objects.update(upserts)

    FileSource(source, Filters(ingress_class=ingress_class, system_namespace=system_namespace), collect).load()
    config = translate(build_world(objects.values()), gateway)
    return {
        "listeners": _dicts(config.listeners),
        "routes": _dicts(config.route_configs),
        # The scoped layout's scopes ((listener, host) → route configuration); empty in Kourier's.
        "scoped_routes": _dicts(scoped_route_pb2.ScopedRouteConfiguration.FromString(e.data) for e in config.encoded.get(SCOPED_ROUTE, ())),
        "clusters": _dicts(config.clusters),
        "endpoints": _dicts(config.load_assignments),
        "secrets": [_redacted(s) for s in _dicts(config.secrets)],
        "ingresses": {
            key: {"programmed": o.programmed, "reason": o.reason, "message": o.message} for key, o in sorted(config.outcomes.items())
        },
    }


def _redacted(secret: dict[str, Any]) -> dict[str, Any]:
    """Private keys never leave kxds except towards Envoy."""
    certificate = secret.get("tls_certificate")
    if certificate and "private_key" in certificate:
        certificate["private_key"] = "[redacted]"
    return secret


def _dicts(messages: Iterable[message.Message]) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
