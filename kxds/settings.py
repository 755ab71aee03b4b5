"""Settings, parsed once in main() and passed down as frozen objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kxds.model.config import ExtAuthzConfig

DEFAULT_INGRESS_CLASS = "kourier.ingress.networking.knative.dev"
DEFAULT_NODE_ID = "3scale-kourier-gateway"
DEFAULT_NODE_CLUSTER = "kourier-knative"
# Route layouts (GatewaySettings.route_layout): Kourier's two route configurations, or one per
# Ingress behind scoped routes (translate/scopes.py).
KOURIER_LAYOUT = "kourier"
SCOPED_LAYOUT = "scoped"
ROUTE_LAYOUTS = (KOURIER_LAYOUT, SCOPED_LAYOUT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ports:
    """Gateway listener ports, Kourier's by default."""

    external_http: int = 8080
    internal_http: int = 8081
    probe_http: int = 8090
    external_https: int = 8443
    internal_https: int = 8444
    probe_https: int = 9443


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """What the translator needs to know about the gateways it configures."""

    listen_address: str = "0.0.0.0"
    ports: Ports = field(default_factory=Ports)
    # KOURIER_HTTPOPTION_DISABLED: ignore `httpOption: Redirected` everywhere (OpenShift).
    http_option_disabled: bool = False
    # Where config-kourier, cluster-cert-secret and routing-serving-certs live.
    system_namespace: str = "knative-serving"
    # CERTS_SECRET_NAMESPACE/CERTS_SECRET_NAME as "ns/name": the one-certificate default for
    # external HTTPS (config-kourier's certs-secret-* keys override it).
    default_certificate: str = ""
    # KOURIER_EXTAUTHZ_*: the legacy ext-authz; when set it wins over config-kourier's keys.
    ext_authz: ExtAuthzConfig | None = None
    # "kourier": Kourier's two route configurations holding every vhost (the contract dashboards
    # know); "scoped": one route configuration per Ingress, chosen by host (translate/scopes.py).
    route_layout: str = SCOPED_LAYOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    kubeconfig: str = ""  # "" → $KUBECONFIG, the pod's service account, ~/.kube/config (as kubectl)
    context: str = ""  # a context of the kubeconfig; "" → its current-context
    namespace: str = ""  # "" → every namespace
    gateway_namespace: str = "kourier-system"  # KOURIER_GATEWAY_NAMESPACE: status hostnames, prober targets
    cluster_domain: str = "cluster.local"
    secrets_by_certificate_uid: bool = False  # ENABLE_SECRET_INFORMER_FILTERING_BY_CERT_UID
    # Only the holder of this Lease (in the system namespace) writes status; every replica serves xDS.
    leader_election: bool = True
    identity: str = ""  # default: $POD_NAME or the host name, plus a random suffix
    lease_duration_seconds: float = 15.0
    lease_renew_seconds: float = 2.0
    # Status writes and Events, as client-go's rate limiter counts them, and how many at once.
    api_qps: float = 50.0
    api_burst: int = 100
    status_workers: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class XdsTls:
    """Certificate files of the xDS server; with a CA, gateways must present a certificate it signed."""

    cert: Path
    key: Path
    ca: Path | None = None


# The Secret the gateways mount (the bundle `kxds bootstrap` points at) and where it is mounted.
DEFAULT_GATEWAY_PKI_SECRET = "kourier-system/kxds-gateway-xds"
DEFAULT_GATEWAY_PKI_DIR = "/etc/kxds/xds"
CA_SECRET_NAME = "kxds-xds-ca"


@dataclass(frozen=True, slots=True, kw_only=True)
class XdsPki:
    """kxds's own CA for mutual TLS on the xDS port (the default): where it is kept, and the names
    the server certificate carries (every address a gateway may dial)."""

    directory: Path | None = None  # file mode: the CA and the gateways' bundle (DIR/gateway/)
    ca_secret: str = ""  # Kubernetes mode, "ns/name"; default <system namespace>/kxds-xds-ca
    gateway_secret: str = DEFAULT_GATEWAY_PKI_SECRET  # Kubernetes mode: the bundle gateways mount
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    leaf_lifetime_seconds: float = 90 * 24 * 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    source_dir: Path | None = None
    kubernetes: KubernetesSettings | None = None
    xds_address: str = "0.0.0.0:18000"
    # How gateways authenticate: kxds's own CA (default); operator-managed certificate files
    # (`xds_tls`, with a CA for client certificates); or, only with `insecure`, nobody (plaintext
    # or server-only TLS, as Kourier: every client is trusted as a gateway).
    xds_tls: XdsTls | None = None
    pki: XdsPki = field(default_factory=XdsPki)
    insecure: bool = False
    admin_address: str = "127.0.0.1:9090"
    ingress_class: str = DEFAULT_INGRESS_CLASS
    system_namespace: str = "knative-serving"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    # Extra wait before a rebuild; 0: an isolated change is rebuilt at once, and changes arriving
    # during a rebuild are coalesced into the next one anyway.
    debounce_seconds: float = 0.0
    # Processes the cold start's translation is spread over (this one included); 1: this one only.
    translate_processes: int = 1
    # Test-only: serve this cluster corrupted so that Envoy rejects it (NACK handling tests).
    test_corrupt_cluster: str = ""
    # Test-only: vhosts of hosts with this prefix carry an oversized header Envoy rejects.
    test_corrupt_host_prefix: str = ""
    # Benchmark baseline: translate and push the way Kourier does (kxds/baseline.py).
    kourier_algorithm: bool = False
