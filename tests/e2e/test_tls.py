"""TLS end to end: SNI per Ingress, default certificates, SDS rotation, broken Secrets, upstream TLS.

Gateway-wide TLS settings (a default certificate, system-internal-tls) would change every other
test's configuration, so these tests run their own kxds and Envoy.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.builders import config_map, endpoint_slice, ingress, path, rule, service, split
from tests.certificates import CertificateAuthority, tls_secret
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, Reply, curl, wait_until

pytestmark = pytest.mark.e2e
NS = "tls"
SYSTEM = "knative-serving"


class TlsStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ca = CertificateAuthority()
        self.ca_file = stack.workdir / "ca.pem"
        self.ca_file.write_bytes(self.ca.pem)

    def backend(self, name: str) -> tuple[str, ...]:
        port = self.stack.backends.start(name)
        self.stack.plane.write(f"svc-{name}.yaml", [service(name, NS, target=port), endpoint_slice(name, [LOCAL], port, NS)])
        return (name,)

    def secret(self, name: str, *hosts: str, namespace: str = NS) -> int:
        cert, key, serial = self.ca.issue(*hosts)
        self.stack.plane.write(f"secret-{namespace}-{name}.yaml", [tls_secret(name, namespace, cert, key)])
        return serial

    def https(self, port: int, host: str) -> Reply:
        return curl(port, host, scheme="https", options=["--cacert", str(self.ca_file)])


def served_serial(port: int, host: str) -> int:
    """The serial of the certificate the gateway presents for this SNI."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((LOCAL, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    stack = Stack(tmp_path_factory.mktemp("tls"))
    env = TlsStack(stack)
    env.secret("default-cert", "default.example.com", namespace="kourier-system")
    env.secret("cluster-cert", "*.tls.svc.cluster.local", namespace=SYSTEM)
    stack.plane.write("config-kourier.yaml", [config_map("config-kourier", {
        "certs-secret-name": "default-cert", "certs-secret-namespace": "kourier-system", "cluster-cert-secret": "cluster-cert",
        "enable-service-access-logging": "false",
    })])
    yield env
    stack.close()


def publish(env: TlsStack, doc: dict[str, Any]) -> None:
    name = doc["metadata"]["name"]
    env.stack.plane.write(f"ing-{name}.yaml", [doc])
    env.stack.plane.wait_ready(f"{NS}/{name}", timeout=30)


def with_tls(doc: dict[str, Any], secret: str, *hosts: str) -> dict[str, Any]:
    doc["spec"]["tls"] = [{"hosts": list(hosts), "secretName": secret, "secretNamespace": NS}]
    return doc


def test_sni_selects_each_ingress_certificate(tls_stack: TlsStack) -> None:
    ports = tls_stack.stack.ports
    serials = {}
    for name in ("alpha", "beta"):
        host = f"{name}.example.com"
        serials[host] = tls_stack.secret(name, host)
        tls_stack.backend(name)
        publish(tls_stack, with_tls(ingress(name, rule([host], path(split(name, namespace=NS))), namespace=NS), name, host))
    for host, serial in serials.items():
        assert served_serial(ports.external_tls, host) == serial
        assert served_serial(ports.probe_tls, host) == serial
        reply = tls_stack.https(ports.external_tls, host)
        assert reply.status == 200 and reply.json()["request"]["host"] == host
        assert curl(ports.external, host).status == 200  # plain HTTP is still served (httpOption Enabled)


def test_default_certificate_for_a_host_without_its_own(tls_stack: TlsStack) -> None:
    ports = tls_stack.stack.ports
    tls_stack.backend("plain")
    publish(tls_stack, ingress("plain", rule(["plain.example.com"], path(split("plain", namespace=NS))), namespace=NS))
    # The one-certificate default: served for any SNI no Ingress certificate names.
    default_serial = served_serial(ports.external_tls, "default.example.com")
    assert served_serial(ports.external_tls, "plain.example.com") == default_serial
    reply = curl(ports.external_tls, "plain.example.com", scheme="https", options=["--cacert", str(tls_stack.ca_file), "--insecure"])
    assert reply.status == 200 and reply.json()["request"]["host"] == "plain.example.com"


def test_cluster_local_tls_on_the_internal_listener(tls_stack: TlsStack) -> None:
    ports = tls_stack.stack.ports
    host, other = "private.tls.svc.cluster.local", "other.tls.svc.cluster.local"
    serial = tls_stack.secret("private", host)
    tls_stack.backend("private")
    doc = ingress("private", rule([host, other], path(split("private", namespace=NS)), visibility="ClusterLocal"), namespace=NS)
    publish(tls_stack, with_tls(doc, "private", host))
    assert served_serial(ports.internal_tls, host) == serial
    reply = tls_stack.https(ports.internal_tls, host)
    assert reply.status == 200 and reply.json()["request"]["host"] == host
    # A cluster-local host without its own certificate gets cluster-cert-secret's.
    assert tls_stack.https(ports.internal_tls, other).status == 200
    # Never on the public side.
    assert curl(ports.external_tls, host, scheme="https", options=["--insecure"]).status == 404


def test_certificate_rotation_under_load_drains_nothing(tls_stack: TlsStack) -> None:
    ports, gateway = tls_stack.stack.ports, tls_stack.stack.gateway
    host = "rotate.example.com"
    first = tls_stack.secret("rotate", host)
    tls_stack.backend("rotate")
    publish(tls_stack, with_tls(ingress("rotate", rule([host], path(split("rotate", namespace=NS))), namespace=NS), "rotate", host))
    assert served_serial(ports.external_tls, host) == first
    watched = ("listener_manager.listener_modified", "listener_manager.listener_in_place_updated", "listener_manager.listener_removed")
    # Publishing the Ingress added its SNI chain (a listener update); let that drain finish first.
    wait_until(lambda: gateway.stat("listener_manager.total_filter_chains_draining") == 0, what="earlier drains to finish")
    before = {s: gateway.stat(s) for s in watched}
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def load() -> None:
        args = ["curl", "-sS", "-w", "%{http_code}\n", "--cacert", str(tls_stack.ca_file),
                "--connect-to", f"{host}:443:{LOCAL}:{ports.external_tls}"]
        while not stop.is_set():
            urls = [a for _ in range(10) for a in ("-o", "/dev/null", f"https://{host}/")]
            out = subprocess.run([*args, *urls], capture_output=True, text=True, check=False, timeout=60)
            codes = out.stdout.split()
            sent[0] += len(codes)
            failures.extend(f"{c} {out.stderr.strip()}" for c in codes if c != "200")
            if out.returncode:
                failures.append(out.stderr.strip())

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: sent[0] >= 30, what="HTTPS load before the rotation")
        second = tls_stack.secret("rotate", host)
        wait_until(lambda: served_serial(ports.external_tls, host) == second, what="the rotated certificate")
        after = sent[0]
        wait_until(lambda: sent[0] >= after + 30, what="HTTPS load after the rotation")
    finally:
        stop.set()
        loader.join()
    assert failures == []
    assert {s: gateway.stat(s) for s in watched} == before, "a certificate rotation must not touch listeners"
    assert gateway.stat("listener_manager.total_filter_chains_draining") == 0


def test_broken_secrets_are_reported_and_disturb_nothing_else(tls_stack: TlsStack) -> None:
    ports, plane = tls_stack.stack.ports, tls_stack.stack.plane
    good_cert, good_key, _ = tls_stack.ca.issue("broken.example.com")
    _, other_key, _ = tls_stack.ca.issue("broken.example.com")
    cases = {
        "mismatch": (tls_secret("mismatch", NS, good_cert, other_key), "tls.key does not match the certificate in tls.crt"),
        "garbled": (tls_secret("garbled", NS, b"not a certificate", good_key), "tls.crt is not a PEM certificate"),
        "missing": (None, "Secret tls/missing not found"),
    }
    tls_stack.backend("broken")
    for name, (secret, _) in cases.items():
        if secret:
            plane.write(f"secret-{name}.yaml", [secret])
        host = f"{name}.broken.example.com"
        plane.write(f"ing-{name}.yaml", [with_tls(ingress(name, rule([host], path(split("broken", namespace=NS))), namespace=NS), name, host)])
    for name, (_, problem) in cases.items():
        status = plane.wait_status(f"{NS}/{name}", lambda e: e["reason"] == "ReconcileIngressFailed")
        assert not status["ready"] and status["message"].startswith("spec.tls[0]: ") and status["message"].endswith(problem)
        # Plain HTTP keeps working. The status is published when the translation decides it, the
        # route once the gateway applied it: wait for the route, not for the status.
        wait_until(lambda name=name: curl(ports.external, f"{name}.broken.example.com").status == 200, what=f"plain HTTP to {name}")
    assert tls_stack.https(ports.external_tls, "alpha.example.com").status == 200
    assert plane.ingresses()[f"{NS}/alpha"]["ready"]


def test_private_keys_never_reach_logs_or_render(tls_stack: TlsStack) -> None:
    plane = tls_stack.stack.plane
    keys = [
        "".join(yaml.safe_load(p.read_text())["stringData"]["tls.key"].splitlines()[1:-1])
        for p in plane.source.glob("secret-*.yaml")
    ]
    assert keys
    rendered = subprocess.run([sys.executable, "-m", "kxds", "render", "--source", str(plane.source)], capture_output=True, text=True, check=True)
    log = plane.log_path.read_text()
    for key in keys:
        for text in (rendered.stdout, log):
            assert key[:40] not in text
    assert any(s["tls_certificate"]["private_key"] == "[redacted]" for s in json.loads(rendered.stdout)["secrets"])


# -- upstream TLS (config-network system-internal-tls) ---------------------------------------


@pytest.fixture(scope="module")
def internal_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    stack = Stack(tmp_path_factory.mktemp("upstream-tls"))
    env = TlsStack(stack)
    ca_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "routing-serving-certs", "namespace": SYSTEM},
                 "stringData": {"ca.crt": env.ca.pem.decode()}}
    stack.plane.write("internal-tls.yaml", [config_map("config-network", {"system-internal-tls": "enabled"}), ca_secret])
    yield env
    stack.close()


def tls_backend(env: TlsStack, name: str, san: str) -> None:
    cert, key, _ = env.ca.issue(san)
    certfile, keyfile = env.stack.workdir / f"{name}.crt", env.stack.workdir / f"{name}.key"
    certfile.write_bytes(cert)
    keyfile.write_bytes(key)
    port = env.stack.backends.start(name, certfile=str(certfile), keyfile=str(keyfile))
    env.stack.plane.write(f"svc-{name}.yaml", [service(name, NS, port=443, port_name="https", target=port),
                                               endpoint_slice(name, [LOCAL], port, NS, port_name="https")])


def test_upstream_tls_verifies_the_backend_san(internal_tls: TlsStack) -> None:
    ports = internal_tls.stack.ports
    tls_backend(internal_tls, "trusted", f"kn-user-{NS}")
    tls_backend(internal_tls, "impostor", "kn-user-somebody-else")
    for name in ("trusted", "impostor"):
        publish(internal_tls, ingress(name, rule([f"{name}.example.com"], path(split(name, port=443, namespace=NS))), namespace=NS))
    reply = curl(ports.external, "trusted.example.com")
    assert reply.status == 200 and reply.json()["request"]["host"] == "trusted.example.com"
    assert internal_tls.stack.backends.hits["trusted"] >= 1
    refused = curl(ports.external, "impostor.example.com")
    assert refused.status == 503 and internal_tls.stack.backends.hits["impostor"] == 0


def test_upstream_tls_without_a_ca_is_reported(internal_tls: TlsStack) -> None:
    plane = internal_tls.stack.plane
    saved = (plane.source / "internal-tls.yaml").read_text()
    plane.write("internal-tls.yaml", [config_map("config-network", {"system-internal-tls": "enabled"})])
    try:
        plane.write("ing-noca.yaml", [ingress("noca", rule(["noca.example.com"], path(split("trusted", port=443, namespace=NS))), namespace=NS)])
        status = plane.wait_status(f"{NS}/noca", lambda e: e["reason"] == "ReconcileIngressFailed")
        assert status["message"] == "system-internal-tls is enabled but Secret knative-serving/routing-serving-certs not found"
    finally:
        plane.remove("ing-noca.yaml")
        plane.write("internal-tls.yaml", list(yaml.safe_load_all(saved)))


def test_a_trust_bundle_configmap_is_trusted_live(internal_tls: TlsStack) -> None:
    """A backend whose certificate comes from a CA only a trust bundle names: refused, until a
    ConfigMap labelled networking.knative.dev/trust-bundle carries that CA (over SDS, no restart)."""
    env, plane = internal_tls, internal_tls.stack.plane
    other = CertificateAuthority("mesh CA")
    cert, key, _ = other.issue(f"kn-user-{NS}")
    certfile, keyfile = env.stack.workdir / "bundled.crt", env.stack.workdir / "bundled.key"
    certfile.write_bytes(cert)
    keyfile.write_bytes(key)
    port = env.stack.backends.start("bundled", certfile=str(certfile), keyfile=str(keyfile))
    plane.write("svc-bundled.yaml", [service("bundled", NS, port=443, port_name="https", target=port),
                                     endpoint_slice("bundled", [LOCAL], port, NS, port_name="https")])
    publish(env, ingress("bundled", rule(["bundled.example.com"], path(split("bundled", port=443, namespace=NS))), namespace=NS))
    assert curl(env.stack.ports.external, "bundled.example.com").status == 503  # not trusted yet
    bundle = config_map("mesh-trust", {"mesh.pem": other.pem.decode()})
    bundle["metadata"]["labels"] = {"networking.knative.dev/trust-bundle": "true"}
    plane.write("trust-bundle.yaml", [bundle])
    wait_until(lambda: curl(env.stack.ports.external, "bundled.example.com").status == 200, what="the trust bundle to apply")
    assert env.stack.backends.hits["bundled"] >= 1
    plane.remove("trust-bundle.yaml")  # (connections already verified stay up, as TLS has it)
