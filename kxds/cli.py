"""The `kxds` command. Every flag can also be set with a KXDS_* environment variable."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kxds.cores import available_cores
from kxds.model.config import ExtAuthzConfig, parse_ext_authz
from kxds.model.errors import FieldError
from kxds.settings import (DEFAULT_GATEWAY_PKI_DIR, DEFAULT_GATEWAY_PKI_SECRET, DEFAULT_INGRESS_CLASS, DEFAULT_NODE_ID, SCOPED_LAYOUT,
                           ROUTE_LAYOUTS, GatewaySettings, KubernetesSettings, Ports, Settings, XdsPki, XdsTls)


def _env_name(flag: str) -> str:
    return "KXDS_" + flag.lstrip("-").replace("-", "_").upper()


def _flag(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """An option whose default comes from KXDS_<FLAG>, so it is satisfied by the environment too."""
    env = os.environ.get(_env_name(flag))
    if env is not None:
        kwargs["default"] = env
        kwargs["required"] = False
    kwargs["help"] = f"{kwargs.get('help', '')} [env {_env_name(flag)}]".strip()
    parser.add_argument(flag, **kwargs)


def _switched_on(value: object) -> bool:
    """A store_true flag, or its KXDS_* environment value ("", "0" and "false" are off)."""
    return value not in (False, "", "0", "false")


def _gateway_flags(parser: argparse.ArgumentParser) -> None:
    ports = Ports()
    _flag(parser, "--listen-address", default="0.0.0.0", help="address the gateway listeners bind")
    for name in ("external-http", "internal-http", "probe-http", "external-https", "internal-https", "probe-https"):
        attribute = name.replace("-", "_")
        _flag(parser, f"--{name}-port", type=int, default=getattr(ports, attribute), help=f"gateway {name.replace('-', ' ')} port")
    _flag(parser, "--ingress-class", default=DEFAULT_INGRESS_CLASS, help="serve only Ingresses of this class")
    _flag(parser, "--route-layout", default=SCOPED_LAYOUT, choices=ROUTE_LAYOUTS,
          help="scoped (default): one route configuration per Ingress, chosen by host (a change re-sends only its own); "
               "kourier: Kourier's two route configurations holding every host (Kourier's names)")
    _flag(parser, "--system-namespace", default=os.environ.get("SYSTEM_NAMESPACE", "knative-serving"), help="namespace of config-kourier and config-network")


def _source_flag(parser: argparse.ArgumentParser, *, required: bool = True, default: str | None = None) -> None:
    _flag(parser, "--source", type=Path, required=required, default=default, help="directory of Kubernetes YAML/JSON documents")


def default_pki_dir() -> Path:
    """Where file mode keeps kxds's CA: $XDG_STATE_HOME/kxds/pki (~/.local/state/kxds/pki)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kxds" / "pki"


def _security_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--insecure", action="store_true",
          help="serve xDS without authenticating gateways (plaintext, or server-only TLS): any client reaching the port gets "
               "configuration and private keys. Only for Kourier's stock gateways on a locked-down network")
    _flag(parser, "--xds-pki-dir", default=str(default_pki_dir()),
          help="file mode: where kxds keeps its xDS CA; the gateways' bundle (for kxds bootstrap --xds-pki) is DIR/gateway")
    _flag(parser, "--xds-server-name", default="", help="extra comma-separated names (DNS or IP) for kxds's xDS certificate")
    _flag(parser, "--gateway-pki-secret", default=DEFAULT_GATEWAY_PKI_SECRET,
          help="Kubernetes mode: NAMESPACE/NAME of the Secret holding the gateways' bundle (mounted at /etc/kxds/xds)")
    # Test-only: certificate lifetimes short enough to watch a rotation happen.
    parser.add_argument("--test-leaf-lifetime", type=float, default=float(os.environ.get("KXDS_TEST_LEAF_LIFETIME", "0")), help=argparse.SUPPRESS)


def _log_flag(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kxds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve Envoy configuration for Knative Ingresses over ADS")
    _source_flag(serve, required=False)
    _flag(serve, "--kubernetes", action="store_true", help="watch the cluster (kubeconfig or in-cluster) instead of --source")
    _flag(serve, "--kubeconfig", default="", help="kubeconfig file (default, as kubectl: $KUBECONFIG, the pod's service account, ~/.kube/config)")
    _flag(serve, "--context", default="", help="kubeconfig context (default: its current-context)")
    _flag(serve, "--namespace", default="", help="watch only this namespace (default: all)")
    _flag(serve, "--gateway-namespace", default=os.environ.get("KOURIER_GATEWAY_NAMESPACE", "kourier-system"),
          help="namespace of the gateway Services, for the status load balancer names")
    _flag(serve, "--cluster-domain", default="cluster.local", help="cluster domain of the status load balancer names")
    _flag(serve, "--no-leader-election", action="store_true", help="write status from this replica without holding the Lease")
    _flag(serve, "--identity", default="", help="leader election identity (default: $POD_NAME or host name, plus a random suffix)")
    _flag(serve, "--lease-duration", type=float, default=15.0, help="seconds a leader's Lease lasts without renewal")
    _flag(serve, "--kube-api-qps", type=float, default=50.0, help="status writes and Events per second, on average (client-go's QPS)")
    _flag(serve, "--kube-api-burst", type=int, default=100, help="status writes and Events allowed in a burst (client-go's burst)")
    _flag(serve, "--status-workers", type=int, default=8, help="status writes in flight at once")
    _flag(serve, "--lease-renew-interval", type=float, default=2.0, help="seconds between Lease renewals and attempts")
    _flag(serve, "--translate-processes", default="auto",
          help="processes the cold start's translation is spread over (forked; 1: none). auto: one per core, at most 4")
    _flag(serve, "--xds-address", default="0.0.0.0:18000", help="gRPC ADS and health address")
    _flag(serve, "--admin-address", default="127.0.0.1:9090", help="admin HTTP address (/ingresses, /metrics, /readyz)")
    _flag(serve, "--xds-tls-cert", default="", help="serve xDS over TLS with this certificate (PEM; re-read when it changes)")
    _flag(serve, "--xds-tls-key", default="", help="private key of --xds-tls-cert (PEM)")
    _flag(serve, "--xds-tls-ca", default="", help="require gateways to present a client certificate signed by this CA (mTLS)")
    _security_flags(serve)
    _gateway_flags(serve)
    # Test-only fault injection (tests/e2e/test_nack.py), deliberately left out of --help.
    serve.add_argument("--test-corrupt-cluster", default=os.environ.get("KXDS_TEST_CORRUPT_CLUSTER", ""), help=argparse.SUPPRESS)
    serve.add_argument("--test-corrupt-host-prefix", default=os.environ.get("KXDS_TEST_CORRUPT_HOST_PREFIX", ""), help=argparse.SUPPRESS)
    serve.add_argument("--kourier-algorithm", action="store_true", help=argparse.SUPPRESS)  # bench/ baseline only
    _log_flag(serve)

    boot = commands.add_parser("bootstrap", help="print an Envoy bootstrap (YAML) that connects to kxds")
    _flag(boot, "--xds-address", required=True, help="HOST:PORT of the kxds ADS server")
    _flag(boot, "--admin-port", type=int, required=True, help="port of the gateway's own admin (on 127.0.0.1)")
    _flag(boot, "--node-id", default=DEFAULT_NODE_ID, help="Envoy node id")
    _flag(boot, "--stats-port", type=int, default=0, help="Kourier's stats listener port (9000 there); 0 leaves it out")
    _flag(boot, "--configmap", default="", help="NAMESPACE/NAME: print it wrapped in that ConfigMap (key envoy-bootstrap.yaml)")
    _flag(boot, "--trim-stats", action="store_true", help="drop per-cluster statistics (much less Envoy memory at thousands of services)")
    _flag(boot, "--sotw", action="store_true",
          help="state-of-the-world xDS (api_type GRPC, as Kourier's gateways) instead of the default incremental (delta) xDS")
    boot.add_argument("--delta", action="store_true", help=argparse.SUPPRESS)  # the default; accepted as before
    _flag(boot, "--xds-pki", default=DEFAULT_GATEWAY_PKI_DIR,
          help="directory on the gateway holding the bundle kxds provisions (ca.crt, sds.yaml): mutual TLS with kxds's own CA")
    _flag(boot, "--insecure", action="store_true", help="plaintext xDS (only against kxds serve --insecure)")
    _flag(boot, "--xds-tls-ca", default="", help="operator-managed TLS instead: trust this CA file (a path on the gateway)")
    _flag(boot, "--xds-tls-cert", default="", help="client certificate file the gateway presents to kxds (mTLS)")
    _flag(boot, "--xds-tls-key", default="", help="private key file of --xds-tls-cert")

    render = commands.add_parser("render", help="print the resources that would be served, as JSON")
    _source_flag(render)
    _gateway_flags(render)

    run = commands.add_parser("run", help="the demo: control plane, sample backends and a real Envoy together")
    _source_flag(run, required=False, default=str(Path("examples")))
    _flag(run, "--xds-address", default="127.0.0.1:18000", help="gRPC ADS address")
    _flag(run, "--admin-address", default="127.0.0.1:9090", help="kxds admin HTTP address")
    _flag(run, "--envoy-admin-port", type=int, default=9901, help="Envoy admin port")
    _security_flags(run)
    _flag(run, "--echo-ports", default="8001,8002", help="comma-separated ports for sample backends ('' for none)")
    _gateway_flags(run)
    _log_flag(run)

    status = commands.add_parser("status", help="print every Ingress and every connected gateway of a running kxds")
    _flag(status, "--admin-address", default="127.0.0.1:9090", help="admin address of the kxds to ask")

    echo = commands.add_parser("echo", help="run the sample backend that describes every request as JSON")
    _flag(echo, "--port", type=int, required=True, help="port to listen on")
    _flag(echo, "--host", default="127.0.0.1", help="address to listen on")
    _flag(echo, "--name", default="", help="name reported in responses (default echo-PORT)")
    return parser


def _as_int(value: Any) -> int:
    return int(value)


def gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    if args.route_layout not in ROUTE_LAYOUTS:  # argparse checks choices on the command line, not KXDS_* defaults
        raise SystemExit(f"kxds: --route-layout (or KXDS_ROUTE_LAYOUT): {args.route_layout!r} is not one of {', '.join(ROUTE_LAYOUTS)}")
    return GatewaySettings(
        listen_address=args.listen_address,
        ports=Ports(
            external_http=_as_int(args.external_http_port),
            internal_http=_as_int(args.internal_http_port),
            probe_http=_as_int(args.probe_http_port),
            external_https=_as_int(args.external_https_port),
            internal_https=_as_int(args.internal_https_port),
            probe_https=_as_int(args.probe_https_port),
        ),
        http_option_disabled="KOURIER_HTTPOPTION_DISABLED" in os.environ,
        system_namespace=args.system_namespace,
        route_layout=args.route_layout,
        default_certificate=_default_certificate(),
        ext_authz=_env_ext_authz(),
    )


_EXT_AUTHZ_ENV = {
    "host": "KOURIER_EXTAUTHZ_HOST",
    "protocol": "KOURIER_EXTAUTHZ_PROTOCOL",
    "failure-mode-allow": "KOURIER_EXTAUTHZ_FAILUREMODEALLOW",
    "max-request-body-bytes": "KOURIER_EXTAUTHZ_MAXREQUESTBYTES",
    "timeout": "KOURIER_EXTAUTHZ_TIMEOUT",
    "path-prefix": "KOURIER_EXTAUTHZ_PATHPREFIX",
    "pack-as-bytes": "KOURIER_EXTAUTHZ_PACKASBYTES",
    "pack-as-byte": "KOURIER_EXTAUTHZ_PACKASBYTES",
}


def _env_ext_authz() -> ExtAuthzConfig | None:
    try:
        return parse_ext_authz(os.environ, prefix="env ", keys=_EXT_AUTHZ_ENV)
    except FieldError as exc:
        raise SystemExit(f"kxds: {exc.field}: {exc.problem}") from None


def _default_certificate() -> str:
    """Kourier's legacy one-certificate env (config-kourier's certs-secret-* keys override it)."""
    namespace, name = os.environ.get("CERTS_SECRET_NAMESPACE", ""), os.environ.get("CERTS_SECRET_NAME", "")
    return f"{namespace}/{name}" if namespace and name else ""


def _positive(value: object, flag: str, kind: type[float] | type[int]) -> float:
    """A number > 0 from a flag or its KXDS_* environment value, or exit naming the flag."""
    try:
        number = kind(str(value))
    except ValueError:
        number = 0
    if number <= 0:
        raise SystemExit(f"kxds serve: {flag}: {value!r} is not a number > 0")
    return number


def settings_from(args: argparse.Namespace) -> Settings:
    kubernetes = None
    if _switched_on(getattr(args, "kubernetes", False)):
        kubernetes = KubernetesSettings(
            kubeconfig=args.kubeconfig,
            context=args.context,
            namespace=args.namespace,
            gateway_namespace=args.gateway_namespace,
            cluster_domain=args.cluster_domain,
            secrets_by_certificate_uid=os.environ.get("ENABLE_SECRET_INFORMER_FILTERING_BY_CERT_UID", "").lower() == "true",
            leader_election=not _switched_on(args.no_leader_election),
            identity=args.identity,
            lease_duration_seconds=float(args.lease_duration),
            lease_renew_seconds=float(args.lease_renew_interval),
            api_qps=_positive(args.kube_api_qps, "--kube-api-qps", float),
            api_burst=int(_positive(args.kube_api_burst, "--kube-api-burst", int)),
            status_workers=int(_positive(args.status_workers, "--status-workers", int)),
        )
    elif not args.source:
        raise SystemExit("kxds serve: give --source DIR, or --kubernetes to watch a cluster")
    return Settings(
        source_dir=Path(args.source) if args.source else None,
        kubernetes=kubernetes,
        xds_address=args.xds_address,
        admin_address=args.admin_address,
        ingress_class=args.ingress_class,
        system_namespace=args.system_namespace,
        gateway=gateway_settings(args),
        xds_tls=_xds_tls(args),
        pki=_pki(args, kubernetes),
        insecure=_switched_on(getattr(args, "insecure", False)),
        test_corrupt_cluster=getattr(args, "test_corrupt_cluster", ""),  # serve only
        test_corrupt_host_prefix=getattr(args, "test_corrupt_host_prefix", ""),
        kourier_algorithm=bool(getattr(args, "kourier_algorithm", False)),
        translate_processes=_processes(getattr(args, "translate_processes", "auto")),  # serve only
    )


def _processes(value: object) -> int:
    if value == "auto":
        return min(available_cores(), 4)
    return int(_positive(value, "--translate-processes", int))


def _pki(args: argparse.Namespace, kubernetes: KubernetesSettings | None) -> XdsPki:
    extra = tuple(n.strip() for n in str(getattr(args, "xds_server_name", "")).split(",") if n.strip())
    secret = str(getattr(args, "gateway_pki_secret", DEFAULT_GATEWAY_PKI_SECRET))
    if kubernetes is not None and secret.count("/") != 1:
        raise SystemExit(f"kxds serve: --gateway-pki-secret: {secret!r} is not NAMESPACE/NAME")
    defaults = XdsPki()
    return XdsPki(directory=Path(args.xds_pki_dir), gateway_secret=secret, server_names=defaults.server_names + extra,
                  leaf_lifetime_seconds=args.test_leaf_lifetime or defaults.leaf_lifetime_seconds)


def _xds_tls(args: argparse.Namespace) -> XdsTls | None:
    cert, key, ca = (getattr(args, f"xds_tls_{part}", "") for part in ("cert", "key", "ca"))
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise SystemExit("kxds serve: --xds-tls-cert and --xds-tls-key go together (--xds-tls-ca adds client verification)")
    if not ca and not _switched_on(getattr(args, "insecure", False)):
        raise SystemExit("kxds serve: --xds-tls-cert without --xds-tls-ca does not authenticate gateways: "
                         "add --xds-tls-ca CA, or --insecure to serve every client that reaches the port")
    for flag, value in (("--xds-tls-cert", cert), ("--xds-tls-key", key), ("--xds-tls-ca", ca)):
        if value and not Path(value).is_file():
            raise SystemExit(f"kxds serve: {flag}: no such file {value}")
    return XdsTls(cert=Path(cert), key=Path(key), ca=Path(ca) if ca else None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kxds.logs import configure_logging

    configure_logging(getattr(args, "log_level", "warning") or "info")
    match args.command:
        case "serve":
            from kxds.memory import map_large_blocks

            map_large_blocks()  # before the objects are read: what a burst frees is not kept resident
            from kxds.app import serve

            return asyncio.run(serve(settings_from(args)))
        case "bootstrap":
            from kxds.bootstrap import XdsClientPki, XdsClientTls, render_bootstrap, render_bootstrap_configmap

            if bool(args.xds_tls_cert) != bool(args.xds_tls_key) or (args.xds_tls_cert and not args.xds_tls_ca):
                raise SystemExit("kxds bootstrap: --xds-tls-cert and --xds-tls-key go together, with --xds-tls-ca")
            tls: XdsClientTls | XdsClientPki | None = XdsClientPki(directory=args.xds_pki)
            if args.xds_tls_ca:
                tls = XdsClientTls(ca=args.xds_tls_ca, cert=args.xds_tls_cert, key=args.xds_tls_key)
            elif _switched_on(args.insecure):
                tls = None
            options = {"node_id": args.node_id, "stats_port": _as_int(args.stats_port),
                       "trim_stats": _switched_on(args.trim_stats), "tls": tls, "delta": not _switched_on(args.sotw)}
            if args.configmap:
                namespace, _, name = str(args.configmap).partition("/")
                sys.stdout.write(render_bootstrap_configmap(namespace, name, args.xds_address, _as_int(args.admin_port), **options))
            else:
                sys.stdout.write(render_bootstrap(args.xds_address, _as_int(args.admin_port), **options))
        case "render":
            from kxds.render import render

            json.dump(render(Path(args.source), gateway_settings(args), args.ingress_class, args.system_namespace), sys.stdout, indent=2)
            sys.stdout.write("\n")
        case "run":
            from kxds.demo import run_demo

            ports = [int(p) for p in str(args.echo_ports).split(",") if p.strip()]
            return asyncio.run(run_demo(settings_from(args), envoy_admin_port=_as_int(args.envoy_admin_port), echo_ports=ports))
        case "status":
            from kxds.status_view import status

            try:
                sys.stdout.write(status(args.admin_address))
            except OSError as exc:
                sys.stderr.write(f"kxds status: cannot reach kxds's admin at {args.admin_address}: {exc}\n")
                return 1
        case "echo":
            from kxds.echo import serve_echo

            asyncio.run(serve_echo(args.host, _as_int(args.port), args.name))
    return 0
