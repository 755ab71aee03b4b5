"""TLS translation: SNI chains over SDS, TLS route copies, default certificates, upstream TLS."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from kxds.settings import KOURIER_LAYOUT, GatewaySettings
from kxds.translate.gateway import GatewayConfig
from kxds.resources import ENDPOINT, SECRET
from tests.builders import backend, ingress, path, rule, split
from tests.certificates import CertificateAuthority, tls_secret
from tests.unit.test_translate import run, vhosts

CA = CertificateAuthority()


def cert_secret(name: str, host: str, namespace: str = "ns") -> dict[str, Any]:
    cert, key, _ = CA.issue(host)
    return tls_secret(name, namespace, cert, key)


def with_tls(doc: dict[str, Any], secret: str, *hosts: str) -> dict[str, Any]:
    doc["spec"]["tls"] = [{"hosts": list(hosts), "secretName": secret, "secretNamespace": "ns"}]
    return doc


def listener(config: GatewayConfig, port: int) -> Any:
    return next(lis for lis in config.listeners if lis.address.socket_address.port_value == port)


def chains(config: GatewayConfig, port: int) -> list[tuple[list[str], str]]:
    out = []
    for chain in listener(config, port).filter_chains:
        context = tls_pb2.DownstreamTlsContext()
        chain.transport_socket.typed_config.Unpack(context)
        out.append((list(chain.filter_chain_match.server_names), context.common_tls_context.tls_certificate_sds_secret_configs[0].name))
    return out


def test_no_tls_no_https_listeners() -> None:
    config = run(ingress("i", rule(["h.example.com"], path(split("a")))), *backend("a", 8001))
    assert [lis.name for lis in config.listeners] == ["listener_8080", "listener_8081", "listener_8090"]
    assert config.secrets == ()


def test_one_sni_chain_per_secret_over_sds() -> None:
    config = run(
        with_tls(ingress("a", rule(["a.example.com", "a2.example.com"], path(split("a")))), "cert-a", "a.example.com", "a2.example.com"),
        with_tls(ingress("b", rule(["b.example.com"], path(split("a")))), "cert-b", "b.example.com"),
        cert_secret("cert-a", "a.example.com"), cert_secret("cert-b", "b.example.com"), *backend("a", 8001),
    )
    expected = [(["a.example.com", "a2.example.com"], "ns/cert-a"), (["b.example.com"], "ns/cert-b")]
    assert chains(config, 8443) == expected and chains(config, 9443) == expected
    assert [s.name for s in config.secrets] == ["ns/cert-a", "ns/cert-b"]
    context = tls_pb2.DownstreamTlsContext()
    listener(config, 8443).filter_chains[0].transport_socket.typed_config.Unpack(context)
    assert list(context.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    assert context.common_tls_context.tls_params.tls_minimum_protocol_version == context.common_tls_context.tls_params.TLSv1_2
    assert [f.name for f in listener(config, 8443).listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert config.outcomes["ns/a"].reason == ""


def test_tls_routes_never_redirect_and_the_probe_listener_serves_them() -> None:
    config = run(
        with_tls(ingress("r", rule(["r.example.com"], path(split("a"))), httpOption="Redirected"), "cert", "r.example.com"),
        cert_secret("cert", "r.example.com"), *backend("a", 8001),
    )
    assert vhosts(config, "external_services")["r.example.com"].routes[-1].HasField("redirect")
    tls_route = vhosts(config, "external_tls_services")["r.example.com"].routes[-1]
    assert tls_route.route.weighted_clusters.clusters[0].name == "ns/a"
    assert [c.name for c in config.clusters] == ["ns/a"]  # only the TLS routes name it
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    manager = hcm.HttpConnectionManager()
    listener(config, 9443).filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.rds.route_config_name == "external_tls_services"


def test_cluster_local_hosts_go_to_the_internal_https_listener() -> None:
    config = run(
        with_tls(ingress("p", rule(["p.ns.svc.cluster.local"], path(split("a")), visibility="ClusterLocal")), "cert", "p.ns.svc.cluster.local"),
        cert_secret("cert", "p.ns.svc.cluster.local"), *backend("a", 8001),
    )
    assert chains(config, 8444) == [(["p.ns.svc.cluster.local"], "ns/cert")]
    assert not any(lis.address.socket_address.port_value == 8443 for lis in config.listeners)
    assert set(vhosts(config, "internal_tls_services")) == {"p.ns.svc.cluster.local"}


def test_default_certificates() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config-kourier", "namespace": "knative-serving"},
                  "data": {"certs-secret-name": "wild", "certs-secret-namespace": "kourier-system", "cluster-cert-secret": "internal"}}
    config = run(
        ingress("i", rule(["i.example.com"], path(split("a")))),
        config_map, cert_secret("wild", "*.example.com", "kourier-system"), cert_secret("internal", "*.svc", "knative-serving"),
        *backend("a", 8001),
    )
    assert chains(config, 8443) == [([], "kourier-system/wild")]
    assert chains(config, 8444) == [([], "knative-serving/internal")]
    assert set(vhosts(config, "external_tls_services")) == {"i.example.com"}
    assert set(vhosts(config, "internal_tls_services")) == {"i.example.com", "internalkourier"}


def test_default_certificate_from_the_environment_and_its_problems() -> None:
    docs = [ingress("i", rule(["i.example.com"], path(split("a")))), *backend("a", 8001)]
    fine = run(*docs, cert_secret("env-cert", "*.example.com", "certs"), gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, default_certificate="certs/env-cert"))
    assert chains(fine, 8443) == [([], "certs/env-cert")]
    broken = run(*docs, gateway=GatewaySettings(route_layout=KOURIER_LAYOUT, default_certificate="certs/env-cert"))
    assert broken.problems == ("config-kourier certs-secret-name/certs-secret-namespace: Secret certs/env-cert not found; that default certificate is not served",)
    assert not any(lis.name == "listener_8443" for lis in broken.listeners)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (None, "Secret ns/cert not found"),
        (tls_secret("cert", "ns", b"junk", b"junk"), "Secret ns/cert: tls.crt is not a PEM certificate"),
        (tls_secret("cert", "ns", CA.issue("x")[0], CA.issue("x")[1]), "Secret ns/cert: tls.key does not match the certificate in tls.crt"),
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert", "namespace": "ns"}, "data": {}}, "Secret ns/cert: missing tls.crt"),
    ],
)
def test_an_unusable_secret_takes_out_only_that_ingress_https(secret: dict[str, Any] | None, problem: str) -> None:
    docs = [with_tls(ingress("bad", rule(["bad.example.com"], path(split("a")))), "cert", "bad.example.com"),
            with_tls(ingress("good", rule(["good.example.com"], path(split("a")))), "good", "good.example.com"),
            cert_secret("good", "good.example.com"), *backend("a", 8001)]
    config = run(*docs, *([secret] if secret else []))
    outcome = config.outcomes["ns/bad"]
    assert outcome.programmed and outcome.reason == "ReconcileIngressFailed" and outcome.message == f"spec.tls[0]: {problem}"
    assert "bad.example.com" in vhosts(config, "external_services")  # plain HTTP stays
    assert chains(config, 8443) == [(["good.example.com"], "ns/good")]
    assert "BEGIN" not in outcome.message


def network(enabled: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config-network", "namespace": "knative-serving"},
            "data": {"system-internal-tls": "Enabled" if enabled else "Disabled"}}


def test_upstream_tls_with_the_routing_ca() -> None:
    ca = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "routing-serving-certs", "namespace": "knative-serving"},
          "stringData": {"ca.crt": CA.pem.decode()}}
    hairpin = ingress("h", rule(["h.example.com"], dict(path(split("a")), rewriteHost="a.ns.svc.cluster.local")))
    config = run(ingress("i", rule(["i.example.com"], path(split("b")))), hairpin, network(True), ca, *backend("a", 8001), *backend("b", 8002))
    by_name = {c.name: c for c in config.clusters}
    context = tls_pb2.UpstreamTlsContext()
    by_name["ns/b"].transport_socket.typed_config.Unpack(context)
    sans = context.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert [s.matcher.exact for s in sans] == ["kn-routing", "kn-user-ns"]
    params = context.common_tls_context.tls_params
    assert params.tls_minimum_protocol_version == params.tls_maximum_protocol_version == params.TLSv1_3
    assert set(config.cluster_needs["ns/b"]) == {(ENDPOINT, "ns/b"), (SECRET, "knative-serving/routing-serving-certs/ca.crt")}
    assert not by_name["ns/a"].HasField("transport_socket")  # rewriteHost paths stay plain
    assert [s.name for s in config.secrets] == ["knative-serving/routing-serving-certs/ca.crt"]


def test_upstream_tls_without_a_ca_fails_the_ingress() -> None:
    config = run(ingress("i", rule(["i.example.com"], path(split("b")))), network(True), *backend("b", 8002))
    assert config.outcomes["ns/i"].message == "system-internal-tls is enabled but Secret knative-serving/routing-serving-certs not found"
    assert not run(ingress("i", rule(["i.example.com"], path(split("b")))), network(False), *backend("b", 8002)).outcomes["ns/i"].reason


def bundle_map(name: str, data: dict[str, str], labelled: bool = True, namespace: str = "knative-serving") -> dict[str, Any]:
    labels = {"networking.knative.dev/trust-bundle": "true"} if labelled else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, "labels": labels}, "data": data}


def test_trust_bundles_join_the_upstream_ca() -> None:
    ca = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "routing-serving-certs", "namespace": "knative-serving"},
          "stringData": {"ca.crt": CA.pem.decode()}}
    first, second, third, ignored = (CertificateAuthority(f"bundle {n}").pem.decode() for n in range(4))
    objects = (ingress("i", rule(["i.example.com"], path(split("b")))), network(True), ca, *backend("b", 8002),
               bundle_map("bundle-b", {"z.pem": third, "a.pem": second, "notes": "not a certificate"}), bundle_map("bundle-a", {"ca.pem": first}),
               bundle_map("unlabelled", {"ca.pem": ignored}, labelled=False), bundle_map("elsewhere", {"ca.pem": ignored}, namespace="ns"))
    (secret,) = run(*objects).secrets
    trusted = secret.validation_context.trusted_ca.inline_bytes.decode()
    # routing-serving-certs first, then each labelled ConfigMap of the system namespace in name order, its values in key order.
    assert [trusted.index(p) for p in (CA.pem.decode(), first, second, third)] == sorted(trusted.index(p) for p in (CA.pem.decode(), first, second, third))
    assert ignored not in trusted and "not a certificate" not in trusted
    assert secret.name == "knative-serving/routing-serving-certs/ca.crt"  # the clusters naming it do not change
