"""Knative-Serving-shaped objects for the benchmark: per Service one Ingress (one ExternalIP host,
the three ClusterLocal host forms, 90/10 over two revisions with Knative-Serving-* headers, a tag
route), the two revisions' Services and EndpointSlices pointing at a few local backends."""

from __future__ import annotations

from typing import Any

CLASS = "kourier.ingress.networking.knative.dev"


def _split(namespace: str, revision: str, percent: int) -> dict[str, Any]:
    return {"serviceNamespace": namespace, "serviceName": revision, "servicePort": 80, "percent": percent,
            "appendHeaders": {"Knative-Serving-Revision": revision, "Knative-Serving-Namespace": namespace}}


def revision(i: int, r: int) -> str:
    return f"svc{i}-{r:05d}"


def ingress(i: int, namespace: str = "bench", generation: int = 1, marker: str = "", latest: int = 2) -> dict[str, Any]:
    """Knative Service i's Ingress; `latest` is its newest revision: 90 % to the one before it,
    10 % and the `canary` tag to it (a rollout moves both forward)."""
    name = f"svc{i}"
    first, second = revision(i, latest - 1), revision(i, latest)
    paths = [
        {"headers": {"Knative-Serving-Tag": {"exact": "canary"}}, "splits": [_split(namespace, second, 100)],
         "appendHeaders": {"Knative-Serving-Tag": "canary"}},
        {"splits": [_split(namespace, first, 90), _split(namespace, second, 10)],
         "appendHeaders": {"Knative-Serving-Default-Route": "true", **({"Bench-Marker": marker} if marker else {})}},
    ]
    rules = [
        {"hosts": [f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"],
         "visibility": "ClusterLocal", "http": {"paths": paths}},
        {"hosts": [f"{name}.{namespace}.example.com"], "visibility": "ExternalIP", "http": {"paths": paths}},
    ]
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace, "generation": generation,
                     "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {"networking.knative.dev/ingress.class": CLASS}},
        "spec": {"httpOption": "Enabled", "rules": rules},
    }


def revision_objects(i: int, backend_ports: list[int], namespace: str = "bench", revisions: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """Each revision's Service and EndpointSlice (Knative Serving creates one private Service per revision)."""
    out = []
    for r in revisions:
        name = revision(i, r)
        port = backend_ports[(2 * i + r - 1) % len(backend_ports)]
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8012}]}})
        out.append(endpoint_slice(name, port, namespace))
    return out


def endpoint_slice(service: str, port: int, namespace: str = "bench", address: str = "127.0.0.1") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-slice", "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


def host(i: int, namespace: str = "bench") -> str:
    return f"svc{i}.{namespace}.example.com"
