"""The certificates kxds provisions for mutual TLS on the xDS port: a CA, the server's certificate
and the gateways' client certificate.

kxds keeps one CA (10 years) in a store (a directory in file mode, a Secret in Kubernetes mode).
Each replica issues its own server certificate from it in memory; the gateways' certificate is
written to the store as a bundle the gateway mounts: `ca.crt` (whom to trust) and `sds.yaml`, an
Envoy SDS file carrying the client certificate and key inline. Envoy re-reads `sds.yaml` when
its directory changes (kubelet swaps a mounted Secret's files atomically), so both certificates
are re-issued at two thirds of their lifetime with no restart and no reconnection: established
xDS streams keep their TLS session, and the next handshake uses the new certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The identity every gateway certificate carries; the xDS server accepts only this one.
GATEWAY_IDENTITY = "kxds-gateway"
# The SDS resource name the gateway bootstrap refers to.
GATEWAY_SDS_SECRET = "kxds_xds_client"
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=90)
# Files of the gateway bundle (keys of the gateway Secret, names in the gateway directory).
CA_FILE = "ca.crt"
SDS_FILE = "sds.yaml"
# The same certificate and key as PEM files, for tools (grpcurl) that speak to the xDS port.
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"


class PkiError(Exception):
    """A stored CA or bundle that cannot be used (names what is wrong)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True, slots=True)
class Leaf:
    """A certificate and its key, as PEM."""

    cert: bytes
    key: bytes

    def due_at(self) -> datetime.datetime:
        """Two thirds into its lifetime: when the next one is issued."""
        cert = x509.load_pem_x509_certificate(self.cert)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * 2 / 3

    def due(self) -> bool:
        return _now() >= self.due_at()


class Authority:
    """A CA that issues the server's and the gateways' certificates."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        try:
            self.certificate = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise PkiError(f"the xDS CA cannot be loaded: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the xDS CA key is not an EC key")
        self._key = key
        self.pem, self.key_pem = cert_pem, key_pem

    @classmethod
    def create(cls, name: str = "kxds xDS CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(_pem(cert), _key_pem(key))

    def _issue(self, common_name: str, sans: Iterable[str], usage: x509.ObjectIdentifier, lifetime: datetime.timedelta) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # A little in the past, for clocks slightly behind ours.
            .not_valid_before(now - min(datetime.timedelta(seconds=30), lifetime / 20))
            .not_valid_after(min(now + lifetime, self.certificate.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in sans]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return Leaf(_pem(cert), _key_pem(key))

    def issue_server(self, names: Iterable[str], lifetime: datetime.timedelta = LEAF_LIFETIME) -> Leaf:
        names = list(dict.fromkeys(names))
        return self._issue(names[0], names, ExtendedKeyUsageOID.SERVER_AUTH, lifetime)

    def issue_gateway(self, lifetime: datetime.timedelta = LEAF_LIFETIME) -> Leaf:
        return self._issue(GATEWAY_IDENTITY, [GATEWAY_IDENTITY], ExtendedKeyUsageOID.CLIENT_AUTH, lifetime)


def gateway_bundle(authority: Authority, leaf: Leaf) -> dict[str, bytes]:
    """The files a gateway mounts: the CA to trust kxds by, and its own certificate as SDS (and as
    PEM files for other tools)."""
    secret = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": GATEWAY_SDS_SECRET,
        "tls_certificate": {"certificate_chain": {"inline_string": leaf.cert.decode()}, "private_key": {"inline_string": leaf.key.decode()}},
    }
    sds = "# Written by kxds: the gateway's client certificate for the xDS connection.\n" + yaml.safe_dump({"resources": [secret]}, sort_keys=False)
    return {CA_FILE: authority.pem, SDS_FILE: sds.encode(), CERT_FILE: leaf.cert, KEY_FILE: leaf.key}


def bundle_leaf(bundle: dict[str, bytes]) -> Leaf | None:
    """The client certificate in a stored gateway bundle, or None if it is missing or unreadable."""
    try:
        document = yaml.safe_load(bundle[SDS_FILE])
        certificate = document["resources"][0]["tls_certificate"]
        return Leaf(certificate["certificate_chain"]["inline_string"].encode(), certificate["private_key"]["inline_string"].encode())
    except (KeyError, IndexError, TypeError, yaml.YAMLError):
        return None


def bundle_current(authority: Authority, bundle: dict[str, bytes] | None) -> bool:
    """Does the stored bundle trust this CA and hold a certificate that is not due yet?"""
    if not bundle or bundle.get(CA_FILE) != authority.pem:
        return False
    leaf = bundle_leaf(bundle)
    try:
        return leaf is not None and not leaf.due()
    except ValueError:
        return False
