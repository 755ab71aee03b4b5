"""Prometheus metrics, on a registry owned by the composition root (no import-time globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from kxds import __version__

# Every label value known in advance is exported at 0 from start-up, so a rate() or an alert on a
# series sees it before the first event (a series that does not exist yet has no rate).
XDS_TYPES = ("CDS", "EDS", "LDS", "RDS", "SRDS", "SDS")
OBJECT_KINDS = ("Ingress", "Service", "EndpointSlice", "Secret", "ConfigMap", "file", "other")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.responses = Counter("kxds_xds_responses", "xDS responses sent", ["type"], registry=r)
        self.acks = Counter("kxds_xds_acks", "xDS responses acknowledged by a gateway", ["type"], registry=r)
        self.nacks = Counter("kxds_xds_nacks", "xDS responses rejected by a gateway", ["type"], registry=r)
        self.unknown_types = Counter("kxds_xds_unknown_type_requests", "xDS requests for a type kxds does not serve", registry=r)
        self.stale = Counter("kxds_xds_stale_nonces", "xDS requests ignored for a stale nonce", ["type"], registry=r)
        self.gateways = Gauge("kxds_connected_gateways", "Envoy gateways with an open ADS stream", registry=r)
        self.unsynced = Gauge("kxds_gateways_unsynced", "Connected gateways that have not applied the newest snapshot", registry=r)
        self.build_seconds = Histogram(
            "kxds_snapshot_build_seconds",
            "Time to translate the world and build a snapshot",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.ingresses = Gauge("kxds_ingresses", "Ingresses of our class by readiness", ["ready"], registry=r)
        self.convergence_seconds = Histogram(
            "kxds_convergence_seconds",
            "From an object change to every connected gateway having ACKed the configuration carrying it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.rejected_objects = Counter("kxds_rejected_objects", "Source documents rejected", ["kind"], registry=r)
        Info("kxds_build", "The running kxds", registry=r).info({"version": __version__})
        for kind in XDS_TYPES:
            for counter in (self.responses, self.acks, self.nacks, self.stale):
                counter.labels(kind)
        for ready in ("true", "false"):
            self.ingresses.labels(ready).set(0)
        for kind in OBJECT_KINDS:
            self.rejected_objects.labels(kind)

    def rejected(self, kind: str) -> None:
        """Count a rejected document by its kind; a kind kxds does not read counts as "other" (the
        label never takes a value a document chose)."""
        self.rejected_objects.labels(kind if kind in OBJECT_KINDS else "other").inc()
