"""Small builders of raw Kubernetes documents for tests."""

from __future__ import annotations

from typing import Any

from kxds.settings import DEFAULT_INGRESS_CLASS


def split(service: str, percent: int = 0, port: int | str = 80, namespace: str = "ns", **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"serviceNamespace": namespace, "serviceName": service, "servicePort": port}
    if percent:
        out["percent"] = percent
    if headers:
        out["appendHeaders"] = headers
    return out


def rule(hosts: list[str], *paths: dict[str, Any], visibility: str = "ExternalIP") -> dict[str, Any]:
    return {"hosts": hosts, "visibility": visibility, "http": {"paths": list(paths)}}


def path(*splits: dict[str, Any], prefix: str = "", headers: dict[str, str] | None = None, append: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"splits": list(splits)}
    if prefix:
        out["path"] = prefix
    if headers:
        out["headers"] = {k: {"exact": v} for k, v in headers.items()}
    if append:
        out["appendHeaders"] = append
    return out


def ingress(name: str, *rules: dict[str, Any], namespace: str = "ns", created: str = "2026-01-01T00:00:00Z",
            ingress_class: str | None = DEFAULT_INGRESS_CLASS, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": created, "generation": 1}
    if ingress_class is not None:
        metadata["annotations"] = {"networking.knative.dev/ingress.class": ingress_class}
    return {"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress", "metadata": metadata,
            "spec": {"rules": list(rules), **spec}}


def service(name: str, namespace: str = "ns", port: int = 80, port_name: str = "http", target: int | str = 8080,
            external_name: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": port_name, "port": port, "targetPort": target}]}
    if external_name:
        spec.update(type="ExternalName", externalName=external_name)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpoint_slice(service_name: str, addresses: list[str], port: int, namespace: str = "ns", port_name: str = "http",
                   ready: bool = True, name: str = "", address_type: str = "IPv4") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-abc", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": address_type,
        "endpoints": [{"addresses": addresses, "conditions": {"ready": ready}}],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def backend(name: str, port: int, namespace: str = "ns", port_name: str = "http") -> list[dict[str, Any]]:
    """A Service on port 80 and its EndpointSlice pointing at 127.0.0.1:port."""
    return [service(name, namespace, port_name=port_name), endpoint_slice(name, ["127.0.0.1"], port, namespace, port_name)]


def config_map(name: str, data: dict[str, str], namespace: str = "knative-serving") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}
