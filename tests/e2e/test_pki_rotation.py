"""kxds's own CA rotates both leaf certificates before they expire, with no restart and no
reconnection: Envoy picks up its new client certificate from the bundle directory, its xDS stream
stays up, and a gateway connecting afterwards is served with the new server certificate."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from kxds.pki import CA_FILE
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, curl, gateway_leaf, wait_until

pytestmark = pytest.mark.e2e
LIFETIME = 20.0  # seconds: re-issued after two thirds of it


def served_serial(plane: ControlPlane) -> int:
    """The serial number of the certificate kxds's xDS port presents now."""
    assert plane.gateway_pki is not None
    cert, key = gateway_leaf(plane.gateway_pki)
    directory = plane.gateway_pki.parent / "client"
    directory.mkdir(exist_ok=True)
    (directory / "c.pem").write_bytes(cert)
    (directory / "k.pem").write_bytes(key)
    context = ssl.create_default_context(cafile=str(plane.gateway_pki / CA_FILE))
    context.load_cert_chain(directory / "c.pem", directory / "k.pem")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((LOCAL, plane.xds_port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=LOCAL) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def envoy_client_serials(gateway: Gateway) -> set[str]:
    """Serial numbers of the client certificates Envoy holds for its xDS connection."""
    return {str(cert["serial_number"]) for entry in json.loads(gateway.admin("/certs"))["certificates"]
            for cert in entry.get("cert_chain", []) if any(san.get("dns") == "kxds-gateway" for san in cert.get("subject_alt_names", []))}


def bundle_serial(directory: Path) -> str:
    cert, _ = gateway_leaf(directory)
    return format(x509.load_pem_x509_certificate(cert).serial_number, "x")


def test_both_certificates_rotate_without_a_restart_or_a_reconnection(tmp_path: Path) -> None:
    ports, backends = ListenerPorts(), Backends()
    plane = ControlPlane(tmp_path, ports, env={"KXDS_TEST_LEAF_LIFETIME": str(LIFETIME)})
    gateway = Gateway(tmp_path, plane)
    second = None
    try:
        assert plane.gateway_pki is not None
        port = backends.start("echo")
        plane.write("objects.yaml", [service("echo", target=port), endpoint_slice("echo", [LOCAL], port),
                                     ingress("app", rule(["app.example.com"], path(split("echo"))))])
        plane.wait_ready("ns/app")
        first_bundle, first_server = bundle_serial(plane.gateway_pki), served_serial(plane)
        # Envoy holds the bundle's certificate (the newest one, should a slow start have seen a rotation already).
        wait_until(lambda: bundle_serial(plane.gateway_pki) in envoy_client_serials(gateway), what="Envoy to hold the bundle's client certificate")
        (stream,) = plane.gateways()

        wait_until(lambda: bundle_serial(plane.gateway_pki) != first_bundle, timeout=LIFETIME, what="the gateway certificate to be re-issued")
        renewed = bundle_serial(plane.gateway_pki)
        # Envoy re-read the SDS file (its own counter), and holds the re-issued certificate.
        wait_until(lambda: gateway.stat("cluster.xds_cluster.client_ssl_socket_factory.ssl_context_update_by_sds") >= 2, timeout=30,
                   what="Envoy to re-read its certificate from the bundle directory")
        # The re-issued certificate, or a later one should the bundle have rotated again meanwhile (every ~13 s).
        wait_until(lambda: bool(envoy_client_serials(gateway) & {renewed, bundle_serial(plane.gateway_pki)}) and renewed != first_bundle,
                   timeout=30, what="Envoy to load the re-issued certificate")
        wait_until(lambda: served_serial(plane) != first_server, timeout=LIFETIME, what="the server certificate to be re-issued")

        # No restart, no reconnection: the same process, the same ADS stream, still updating.
        assert plane.process.poll() is None
        assert [g["id"] for g in plane.gateways()] == [stream["id"]]
        plane.write("more.yaml", [ingress("after", rule(["after.example.com"], path(split("echo"))))])
        plane.wait_ready("ns/after")
        assert curl(ports.external, "after.example.com").status == 200
        # A gateway connecting now gets the new server certificate and is served.
        second = Gateway(tmp_path, plane, name="gw-after")
        plane.wait_ready("ns/after")
        assert len(plane.gateways()) == 2
    finally:
        for g in (second, gateway):
            if g is not None:
                g.stop()
        plane.stop()
        backends.close()
