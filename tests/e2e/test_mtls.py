"""Mutual TLS between Envoy and kxds: a real Envoy with a client certificate is served; clients
without one, with one from another CA, or in plaintext are refused; the server certificate
rotates without a restart; no key ever reaches the log."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kxds.bootstrap import XdsClientTls
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.certificates import CertificateAuthority
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, curl, wait_until

pytestmark = pytest.mark.e2e


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir, self.ca, self.stranger = directory, CertificateAuthority("xds CA"), CertificateAuthority("another CA")
        self.files = {"ca": self._write("ca.pem", self.ca.pem)}
        self.server_serial = self.issue_server()
        for name, authority in (("gateway", self.ca), ("stranger", self.stranger)):
            cert, key, _ = authority.issue(name, client=True)
            self.files[f"{name}.crt"], self.files[f"{name}.key"] = self._write(f"{name}.crt", cert), self._write(f"{name}.key", key)

    def _write(self, name: str, data: bytes) -> Path:
        (self.dir / name).write_bytes(data)
        return self.dir / name

    def issue_server(self) -> int:
        cert, key, serial = self.ca.issue(LOCAL)
        self.files["server.key"] = self._write("server.key", key)
        self.files["server.crt"] = self._write("server.crt", cert)
        return serial

    def channel(self, port: int, client: str = "") -> grpc.Channel:
        key = self.files[f"{client}.key"].read_bytes() if client else None
        chain = self.files[f"{client}.crt"].read_bytes() if client else None
        credentials = grpc.ssl_channel_credentials(self.ca.pem, private_key=key, certificate_chain=chain)
        return grpc.secure_channel(f"{LOCAL}:{port}", credentials)


def health(channel: grpc.Channel) -> int:
    with channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, ControlPlane, Gateway, ListenerPorts]]:
    workdir = tmp_path_factory.mktemp("mtls")
    pki = Pki(workdir)
    ports, backends = ListenerPorts(), Backends()
    plane = ControlPlane(workdir, ports, extra_args=[
        "--xds-tls-cert", str(pki.files["server.crt"]), "--xds-tls-key", str(pki.files["server.key"]), "--xds-tls-ca", str(pki.files["ca"]),
    ])
    tls = XdsClientTls(ca=str(pki.files["ca"]), cert=str(pki.files["gateway.crt"]), key=str(pki.files["gateway.key"]))
    gateway = Gateway(workdir, plane, bootstrap_options={"tls": tls})
    try:
        port = backends.start("echo")
        plane.write("objects.yaml", [service("echo", target=port), endpoint_slice("echo", [LOCAL], port),
                                     ingress("secure", rule(["secure.example.com"], path(split("echo"))))])
        yield pki, plane, gateway, ports
    finally:
        gateway.stop()
        plane.stop()
        backends.close()


def test_envoy_with_a_client_certificate_is_served(mtls: tuple[Pki, ControlPlane, Gateway, ListenerPorts]) -> None:
    _, plane, _, ports = mtls
    plane.wait_ready("ns/secure")
    assert curl(ports.external, "secure.example.com").status == 200


def test_clients_without_the_right_certificate_are_refused(mtls: tuple[Pki, ControlPlane, Gateway, ListenerPorts]) -> None:
    pki, plane, _, _ = mtls
    assert health(pki.channel(plane.xds_port, "gateway")) == health_pb2.HealthCheckResponse.SERVING
    for refused in (pki.channel(plane.xds_port), pki.channel(plane.xds_port, "stranger"), grpc.insecure_channel(f"{LOCAL}:{plane.xds_port}")):
        with pytest.raises(grpc.RpcError) as error:
            health(refused)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_server_certificate_rotates_without_a_restart(mtls: tuple[Pki, ControlPlane, Gateway, ListenerPorts]) -> None:
    pki, plane, _, ports = mtls
    pid = plane.process.pid

    def presented_serial() -> int:
        context = ssl.create_default_context(cafile=str(pki.files["ca"]))
        context.load_cert_chain(pki.files["gateway.crt"], pki.files["gateway.key"])
        context.set_alpn_protocols(["h2"])
        with socket.create_connection((LOCAL, plane.xds_port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=LOCAL) as conn:
            der = conn.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    assert presented_serial() == pki.server_serial
    rotated = pki.issue_server()
    wait_until(lambda: presented_serial() == rotated, what="the rotated xDS certificate")
    assert plane.process.pid == pid and plane.process.poll() is None
    plane.write("more.yaml", [ingress("after-rotation", rule(["after.example.com"], path(split("echo"))))])
    plane.wait_ready("ns/after-rotation")  # the gateway's stream lives on
    assert curl(ports.external, "after.example.com").status == 200
    log = plane.log_path.read_text()
    for key in ("server.key", "gateway.key"):
        body = pki.files[key].read_text().splitlines()[1]
        assert body not in log
