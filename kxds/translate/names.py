"""Resource names of the Kourier data-plane contract (dashboards and bootstraps depend on them)."""

from __future__ import annotations

import sys

EXTERNAL_ROUTES = "external_services"
INTERNAL_ROUTES = "internal_services"
EXTERNAL_TLS_ROUTES = "external_tls_services"
INTERNAL_TLS_ROUTES = "internal_tls_services"

# Static cluster in the gateway bootstrap: Envoy's own admin, answering /ready.
STATS_CLUSTER = "service_stats"
STATUS_VHOST = "internalkourier"

PROBE_HASH_HEADER = "K-Network-Hash"
PROBE_OVERRIDE = "override"


def listener_name(port: int) -> str:
    return f"listener_{port}"


def cluster_name(namespace: str, service: str) -> str:
    # Interned: a cluster's name is built for its resource, its assignment, what routes need and
    # the indexes, and a gateway's subscription names it again (20,000 at 10,000 Ingresses).
    return sys.intern(f"{namespace}/{service}")


def vhost_name(ingress_key: str, host: str) -> str:
    return f"({ingress_key}).Domain[{host}]"


def route_name(ingress_key: str, host: str, path: str) -> str:
    return f"({ingress_key}).Domain[{host}].Paths[{path or '/'}]"
