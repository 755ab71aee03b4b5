"""HTTPS: which certificate serves which hosts on the TLS listeners (knative-ingress-contract.md §10.1, §10.3).

External 8443 and probe 9443 carry the ExternalIP hosts of Ingresses with `spec.tls` (plus the
one-certificate default); internal 8444 carries ClusterLocal hosts (plus `cluster-cert-secret`).
The probe listener serves the TLS routes, not the plain ones as Kourier does, so the probe hash of a
Redirected Ingress is checked too.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from kxds.model.config import KourierConfig
from kxds.model.ingress import Ingress, Visibility
from kxds.model.secret import Secret
from kxds.settings import GatewaySettings
from kxds.translate import names, routes, tls
from kxds.translate.listeners import SniChain, listen_addresses, tls_listener


class HttpsPlan:
    def __init__(self, secrets: Mapping[str, Secret], kourier: KourierConfig, gateway: GatewaySettings) -> None:
        self._secrets = secrets
        self._kourier = kourier
        self._gateway = gateway
        self.problems: list[str] = []
        self._used: dict[str, Secret] = {}
        self._external: dict[str, set[str]] = {}  # secret → SNI hosts
        self._internal: dict[str, set[str]] = {}
        self.external_vhosts: list[routes.VirtualHost] = []
        self.internal_vhosts: list[routes.VirtualHost] = []
        # Clusters the TLS routes name: for a Redirected Ingress, only its TLS routes forward.
        self.clusters: set[str] = set()
        self._default_external = self._gateway_certificate(
            kourier.certs_secret_namespace or gateway.default_certificate.partition("/")[0],
            kourier.certs_secret_name or gateway.default_certificate.partition("/")[2],
            "config-kourier certs-secret-name/certs-secret-namespace",
        )
        self._default_internal = self._gateway_certificate(
            gateway.system_namespace, kourier.cluster_cert_secret, "config-kourier cluster-cert-secret"
        )

    @property
    def serves_every_ingress(self) -> bool:
        """A gateway-wide certificate puts every Ingress's hosts on an HTTPS listener."""
        return bool(self._default_external or self._default_internal)

    def _gateway_certificate(self, namespace: str, name: str, setting: str) -> str:
        if not (namespace and name):
            return ""
        ref = f"{namespace}/{name}"
        problem = tls.certificate_problem(self._secrets.get(ref), ref)
        if problem:
            self.problems.append(f"{setting}: {problem}; that default certificate is not served")
            return ""
        self._used[ref] = self._secrets[ref]
        return ref

    def add(self, ingress: Ingress, redirects_disabled: bool) -> str:
        """Serve the Ingress over HTTPS as its `spec.tls` says; the problem if a Secret is unusable."""
        if not (ingress.tls or self._default_external or self._default_internal):
            return ""
        refs = []
        for i, entry in enumerate(ingress.tls):
            ref = f"{entry.secret_namespace}/{entry.secret_name}"
            problem = tls.certificate_problem(self._secrets.get(ref), ref)
            if problem:
                return f"spec.tls[{i}]: {problem}"
            refs.append(ref)
        visibility = {h: rule.visibility for rule in reversed(ingress.rules) for h in rule.hosts}
        claimed: set[str] = set()
        for ref, entry in zip(refs, ingress.tls):
            self._used[ref] = self._secrets[ref]
            for host in entry.hosts:
                if host in claimed or host not in visibility:
                    continue  # a host gets the first certificate naming it; unknown hosts are ignored
                claimed.add(host)
                chains = self._external if visibility[host] is Visibility.EXTERNAL_IP else self._internal
                chains.setdefault(ref, set()).add(host)
        vhosts = routes.ingress_virtual_hosts(ingress, tls=True, redirects_disabled=redirects_disabled, ext_authz=self._kourier.ext_authz is not None)
        self.clusters |= vhosts.clusters
        self.external_vhosts.extend(vhosts.external)
        # With a cluster-wide internal certificate, every internal host is served over HTTPS.
        self.internal_vhosts.extend(vhosts.internal if self._default_internal else vhosts.cluster_local)
        return ""

    def secrets(self) -> list[secret_pb2.Secret]:
        return [tls.certificate_secret(s) for _, s in sorted(self._used.items())]

    def listeners(self) -> list[listener_pb2.Listener]:
        ports, kourier = self._gateway.ports, self._kourier
        addresses, proxy_protocol = listen_addresses(self._gateway, kourier), kourier.enable_proxy_protocol
        out = []
        external = self._chains(self._external, self._default_external)
        if external:
            out.append(tls_listener(addresses, ports.external_https, names.EXTERNAL_TLS_ROUTES, external, kourier, proxy_protocol=proxy_protocol))
            out.append(tls_listener(addresses, ports.probe_https, names.EXTERNAL_TLS_ROUTES, external, kourier, proxy_protocol=False))
        internal = self._chains(self._internal, self._default_internal)
        if internal:
            out.append(tls_listener(addresses, ports.internal_https, names.INTERNAL_TLS_ROUTES, internal, kourier, proxy_protocol=proxy_protocol))
        return out

    def route_config_vhosts(self) -> dict[str, list[routes.VirtualHost]]:
        """TLS route configurations, for the listeners that exist."""
        out = {}
        if self._external or self._default_external:
            out[names.EXTERNAL_TLS_ROUTES] = self.external_vhosts
        if self._internal or self._default_internal:
            out[names.INTERNAL_TLS_ROUTES] = [*self.internal_vhosts, *([routes.status_vhost(self._kourier.ext_authz is not None)] if self._default_internal else [])]
        return out

    @staticmethod
    def _chains(sni: dict[str, set[str]], default: str) -> list[SniChain]:
        chains = [SniChain(tuple(sorted(hosts)), ref) for ref, hosts in sni.items()]
        return chains + ([SniChain((), default)] if default else [])
