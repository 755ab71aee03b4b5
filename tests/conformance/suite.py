"""The conformance harness, locally: Knative's object shapes, creation and dialling rules.

Ingresses live in namespace `serving-tests`, Services listen on a port in 50–99 named as the suite
names them (`http`, `http2`, or unnamed for httpproxy), backends run on free local ports, and an
Ingress counts as created once kxds reports it Ready with the hash of its stored spec.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any

from kxds.model.ingress import apply_defaults, parse_ingress
from tests.builders import endpoint_slice
from tests.conftest import Stack
from tests.conformance.backends import Factory, runtime
from tests.e2e.harness import LOCAL

NS = "serving-tests"
CLASS = "kourier.ingress.networking.knative.dev"
_serial = itertools.count(1)


def unique(case: str) -> str:
    """A name per case and call, like the suite's `ingress-conformance-N-<case>-<random>`."""
    return f"{case.replace('/', '-').replace('_', '-')}-{next(_serial)}"


def service_port(name: str) -> int:
    return 50 + zlib.crc32(name.encode()) % 50


def create_backend(stack: Stack, name: str, app: Factory = runtime, port_name: str | None = "http",
                   app_protocol: str = "") -> tuple[str, int]:
    """A running backend and its Service + EndpointSlice; returns (name, Service port)."""
    target = stack.backends.start(name, app)
    port = service_port(name)
    spec_port: dict[str, Any] = {"port": port, "targetPort": target}
    if port_name:
        spec_port["name"] = port_name
    if app_protocol:
        spec_port["appProtocol"] = app_protocol
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS}, "spec": {"ports": [spec_port]}}
    stack.plane.write(f"svc-{name}.yaml", [svc, endpoint_slice(name, [LOCAL], target, NS, port_name or "")])
    return name, port


def external_name_service(stack: Stack, name: str, external_name: str, port: int, port_name: str = "http2") -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
           "spec": {"type": "ExternalName", "externalName": external_name, "ports": [{"name": port_name, "port": port, "targetPort": port}]}}
    stack.plane.write(f"svc-{name}.yaml", [svc])


def delete_backend(stack: Stack, name: str) -> None:
    stack.plane.remove(f"svc-{name}.yaml")
    stack.backends.stop(name)


def split(backend: tuple[str, int], percent: int = 0, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"serviceNamespace": NS, "serviceName": backend[0], "servicePort": backend[1]}
    if percent:
        out["percent"] = percent
    if headers:
        out["appendHeaders"] = headers
    return out


def http_path(*splits: dict[str, Any], prefix: str = "", headers: dict[str, str] | None = None,
              append: dict[str, str] | None = None, rewrite_host: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"splits": list(splits)}
    if prefix:
        out["path"] = prefix
    if rewrite_host:
        out["rewriteHost"] = rewrite_host
    if headers is not None:
        out["headers"] = {k: {"exact": v} for k, v in headers.items()}
    if append:
        out["appendHeaders"] = append
    return out


def ingress_rule(hosts: list[str], *paths: dict[str, Any], visibility: str = "ExternalIP") -> dict[str, Any]:
    return {"hosts": hosts, "visibility": visibility, "http": {"paths": list(paths)}}


def ingress_object(name: str, *rules: dict[str, Any], annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """As the suite's CreateIngress: class annotation, API defaults, httpOption Enabled when empty."""
    body = apply_defaults({"rules": list(rules), **spec})
    body.setdefault("httpOption", "Enabled")
    metadata: dict[str, Any] = {"name": name, "namespace": NS, "generation": 1,
                                "annotations": {"networking.knative.dev/ingress.class": CLASS} if annotations is None else annotations}
    return {"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress", "metadata": metadata, "spec": body}


def create_ingress_ready(stack: Stack, ingress: dict[str, Any]) -> str:
    """Write the Ingress and wait until every gateway serves its hash (the suite's IsReady)."""
    name = ingress["metadata"]["name"]
    stack.plane.write(f"ing-{name}.yaml", [ingress])
    digest = parse_ingress(ingress).hash
    stack.plane.wait_ready(f"{NS}/{name}", digest, timeout=30)
    return digest


def update_ingress(stack: Stack, ingress: dict[str, Any], *rules: dict[str, Any]) -> dict[str, Any]:
    """As the suite's UpdateIngress: replace the spec, validated but *not* defaulted."""
    updated = {**ingress, "metadata": {**ingress["metadata"], "generation": ingress["metadata"]["generation"] + 1},
               "spec": {"rules": list(rules)}}
    create_ingress_ready(stack, updated)
    return updated
