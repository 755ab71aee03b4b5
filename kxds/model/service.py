"""Kubernetes Services and EndpointSlices: the backends an Ingress split points at."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kxds.model import fields
from kxds.model.errors import FieldError, InvalidObject

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Kourier speaks HTTP/2 prior knowledge upstream when a Service port carries one of these names.
H2C_PORT_NAMES = frozenset({"http2", "h2c"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    namespace: str
    name: str
    type: str
    external_name: str
    ports: tuple[ServicePort, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def speaks_h2c(self) -> bool:
        return any(p.name in H2C_PORT_NAMES for p in self.ports)

    def port_for(self, wanted: int | str) -> ServicePort | None:
        """The port a split names: ints match by number, strings by port name."""
        for port in self.ports:
            if (port.port if isinstance(wanted, int) else port.name) == wanted:
                return port
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlicePort:
    name: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    addresses: tuple[str, ...]  # ready addresses only, sorted
    ports: tuple[SlicePort, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        """The key of the Service this slice belongs to ("ns/name", like Service.key)."""
        return f"{self.namespace}/{self.service_name}"


def _identity(raw: Mapping[str, Any], kind: str) -> tuple[str, str, Mapping[str, Any]]:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise InvalidObject(kind, "", "", "metadata.name", "missing field")
    namespace = metadata.get("namespace") or "default"
    # Interned: a namespace repeats on every object in it (tens of thousands of copies otherwise).
    return sys.intern(str(namespace)), metadata["name"], metadata


def _port_number(value: Any, at: str) -> int:
    number = fields.integer(value, at)
    if not 0 < number < 65536:
        raise FieldError(at, f"invalid port {number}: must be 1-65535")
    return number


def parse_service(raw: Mapping[str, Any]) -> Service:
    namespace, name, _ = _identity(raw, "Service")
    try:
        spec = fields.mapping(raw.get("spec"), "spec")
        ports = []
        for i, p in enumerate(fields.sequence(spec.get("ports"), "spec.ports")):
            port = fields.mapping(p, f"spec.ports[{i}]")
            number = _port_number(port.get("port"), f"spec.ports[{i}].port")
            target = fields.int_or_string(port.get("targetPort"), f"spec.ports[{i}].targetPort")
            port_name = sys.intern(fields.string(port.get("name"), f"spec.ports[{i}].name"))
            ports.append(ServicePort(name=port_name, port=number, target_port=target or number))
        service_type = fields.string(spec.get("type"), "spec.type") or "ClusterIP"
        external_name = fields.string(spec.get("externalName"), "spec.externalName")
        if service_type == "ExternalName" and not external_name:
            raise FieldError("spec.externalName", "missing field for a Service of type ExternalName")
        return Service(namespace=namespace, name=sys.intern(name), type=service_type, external_name=external_name, ports=tuple(ports))
    except FieldError as exc:
        raise InvalidObject("Service", namespace, name, exc.field, exc.problem) from exc


def parse_endpoint_slice(raw: Mapping[str, Any]) -> EndpointSlice:
    namespace, name, metadata = _identity(raw, "EndpointSlice")
    try:
        labels = fields.mapping(metadata.get("labels"), "metadata.labels")
        service_name = fields.string(labels.get(SERVICE_NAME_LABEL), f"metadata.labels.{SERVICE_NAME_LABEL}")
        address_type = fields.string(raw.get("addressType"), "addressType")
        addresses: set[str] = set()
        for i, e in enumerate(fields.sequence(raw.get("endpoints"), "endpoints")):
            endpoint = fields.mapping(e, f"endpoints[{i}]")
            conditions = fields.mapping(endpoint.get("conditions"), f"endpoints[{i}].conditions")
            if conditions.get("ready") is False:  # absent means ready (discovery.k8s.io/v1)
                continue
            for j, a in enumerate(fields.sequence(endpoint.get("addresses"), f"endpoints[{i}].addresses")):
                addresses.add(_address(a, address_type, f"endpoints[{i}].addresses[{j}]"))
        ports = tuple(
            SlicePort(
                name=sys.intern(fields.string(fields.mapping(p, f"ports[{k}]").get("name"), f"ports[{k}].name")),
                port=_port_number(fields.mapping(p, f"ports[{k}]").get("port"), f"ports[{k}].port"),
            )
            for k, p in enumerate(fields.sequence(raw.get("ports"), "ports"))
        )
        if address_type not in ("IPv4", "IPv6"):
            addresses = set()  # FQDN slices are not routable endpoints for Envoy's EDS
        return EndpointSlice(
            namespace=namespace, name=sys.intern(name), service_name=sys.intern(service_name), addresses=tuple(sorted(addresses)), ports=ports
        )
    except FieldError as exc:
        raise InvalidObject("EndpointSlice", namespace, name, exc.field, exc.problem) from exc


def _address(value: Any, address_type: str, at: str) -> str:
    text = fields.string(value, at)
    if address_type in ("IPv4", "IPv6"):
        try:
            return sys.intern(str(ipaddress.ip_address(text)))  # a pod's address recurs in every slice naming it
        except ValueError:
            raise FieldError(at, f"invalid {address_type} address {text!r}") from None
    return text
