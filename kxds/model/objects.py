"""One entry point from a raw Kubernetes document to a typed kxds object."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kxds.model.config import (
    KOURIER_CONFIG_NAME,
    NETWORK_CONFIG_NAME,
    KourierConfig,
    NetworkConfig,
    TrustBundle,
    is_trust_bundle,
    parse_kourier_config,
    parse_network_config,
    parse_trust_bundle,
)
from kxds.model.errors import FieldError, InvalidObject
from kxds.model.ingress import Ingress, RejectedIngress, ingress_class, parse_ingress
from kxds.model.secret import Secret, parse_secret
from kxds.model.service import EndpointSlice, Service, parse_endpoint_slice, parse_service
from kxds.model.shape import check_shape

Parsed = Ingress | RejectedIngress | Service | EndpointSlice | Secret | KourierConfig | NetworkConfig | TrustBundle

# (apiVersion, kind) pairs kxds understands; anything else in a source is skipped.
KNOWN_KINDS = {
    ("networking.internal.knative.dev/v1alpha1", "Ingress"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
}


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """What a source keeps: our Ingress class and the namespace holding the ConfigMaps."""

    ingress_class: str
    system_namespace: str


def object_key(raw: Mapping[str, Any]) -> ObjectKey:
    """The object's kind, namespace and name; only strings count (a hostile document may hold
    anything there, and turning an aliased structure into text would expand it)."""
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}

    def text(value: Any, default: str = "") -> str:
        # Interned: a key lives as long as its object, and the kind and namespace (and the name,
        # which the parsed object interns too) would otherwise be a copy per key, ~7 MB at
        # 10,000 Knative Services.
        return sys.intern(value[:253]) if isinstance(value, str) and value else default

    return ObjectKey(text(raw.get("kind")), text(metadata.get("namespace"), "default"), text(metadata.get("name")))


def parse_object(raw: Any, filters: Filters) -> tuple[ObjectKey, Parsed] | None:
    """The typed object, or None when kxds does not own or use it; InvalidObject when unusable."""
    if not isinstance(raw, Mapping):
        raise InvalidObject("document", "", "", "", f"expected a Kubernetes object, got {type(raw).__name__}")
    key = object_key(raw)
    try:
        check_shape(raw)  # before anything below walks it
    except FieldError as exc:
        raise InvalidObject(key.kind or "document", key.namespace, key.name, exc.field[:200], exc.problem) from None
    if (raw.get("apiVersion"), raw.get("kind")) not in KNOWN_KINDS:
        return None
    if not key.name:
        raise InvalidObject(key.kind, key.namespace, "", "metadata.name", "missing field")
    match key.kind:
        case "Ingress":
            # Another class is ignored before anything else: not parsed, reported or counted.
            return (key, parse_ingress(raw)) if ingress_class(raw) == filters.ingress_class else None
        case "Service":
            return key, parse_service(raw)
        case "EndpointSlice":
            return key, parse_endpoint_slice(raw)
        case "Secret":
            return key, parse_secret(raw)
        case "ConfigMap" if key.namespace == filters.system_namespace:
            raw_data = raw.get("data")
            data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
            if key.name == KOURIER_CONFIG_NAME:
                return key, parse_kourier_config(data)
            if key.name == NETWORK_CONFIG_NAME:
                return key, parse_network_config(data)
            metadata = raw.get("metadata")
            if isinstance(metadata, Mapping) and is_trust_bundle(metadata):
                return key, parse_trust_bundle(key.namespace, key.name, data)
    return None
