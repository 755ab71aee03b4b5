"""TLS: Kubernetes Secrets checked and turned into SDS resources, and the TLS contexts naming them.

Certificates reach Envoy over SDS on the ADS stream, referenced by name from listeners and
clusters, so rotating a certificate re-sends one Secret resource and never a listener.
Nothing here puts key material into a message that could be logged: problems name the Secret and
the key, never its content.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from kxds.model.secret import Secret
from kxds.translate.clusters import ads_source

CERTIFICATE_KEY = "tls.crt"
PRIVATE_KEY = "tls.key"
CA_KEY = "ca.crt"
# Knative's routing certificates carry one of these DNS SANs (knative-ingress-contract.md §10.8).
ROUTING_SAN = "kn-routing"

_checked: dict[str, str] = {}  # fingerprint → problem ("" when fine); parsing PEM is not free


def certificate_problem(secret: Secret | None, ref: str) -> str:
    """Why a Secret cannot serve as a certificate ("" when it can)."""
    if secret is None:
        return f"Secret {ref} not found"
    if secret.fingerprint not in _checked:
        _checked[secret.fingerprint] = _check_key_pair(secret)
    problem = _checked[secret.fingerprint]
    return f"Secret {ref}: {problem}" if problem else ""


def _check_key_pair(secret: Secret) -> str:
    chain, private = secret.data.get(CERTIFICATE_KEY), secret.data.get(PRIVATE_KEY)
    if not chain:
        return f"missing {CERTIFICATE_KEY}"
    if not private:
        return f"missing {PRIVATE_KEY}"
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        return f"{CERTIFICATE_KEY} is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(private, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"{PRIVATE_KEY} is not an unencrypted PEM private key"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != certificate.public_key().public_bytes(serialization.Encoding.DER, spki):
        return f"{PRIVATE_KEY} does not match the certificate in {CERTIFICATE_KEY}"
    return ""


def ca_problem(secret: Secret | None, ref: str) -> str:
    if secret is None:
        return f"Secret {ref} not found"
    bundle = secret.data.get(CA_KEY)
    if not bundle:
        return f"Secret {ref}: missing {CA_KEY}"
    try:
        x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return f"Secret {ref}: {CA_KEY} is not a PEM certificate bundle"
    return ""


def ca_secret_name(secret: Secret) -> str:
    return f"{secret.key}/{CA_KEY}"


def certificate_secret(secret: Secret) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=secret.key,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=secret.data[CERTIFICATE_KEY]),
            private_key=base_pb2.DataSource(inline_bytes=secret.data[PRIVATE_KEY]),
        ),
    )


def ca_secret(secret: Secret, bundles: Iterable[bytes] = ()) -> secret_pb2.Secret:
    """The upstream CA: the Secret's ca.crt, then each trust bundle's certificates. Its name stays
    the Secret's, so a bundle change re-sends this one SDS resource and nothing else."""
    trusted = secret.data[CA_KEY].rstrip(b"\n") + b"\n" + b"".join(bundles)
    return secret_pb2.Secret(
        name=ca_secret_name(secret),
        validation_context=common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=trusted)),
    )


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def downstream_context(secret_name: str, cipher_suites: tuple[str, ...]) -> tls_pb2.DownstreamTlsContext:
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_params=common_pb2.TlsParameters(
                tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2, cipher_suites=list(cipher_suites)
            ),
            alpn_protocols=["h2", "http/1.1"],
            tls_certificate_sds_secret_configs=[_sds(secret_name)],
        )
    )


def upstream_context(ca_name: str, service_namespace: str, *, http2: bool) -> tls_pb2.UpstreamTlsContext:
    """Knative system-internal TLS: TLS 1.3 only, the routing CA, SAN kn-routing or kn-user-<ns>."""
    sans = [
        common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=name))
        for name in (ROUTING_SAN, f"kn-user-{service_namespace}")
    ]
    return tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_params=common_pb2.TlsParameters(
                tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
                tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
            ),
            alpn_protocols=["h2"] if http2 else [],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(match_typed_subject_alt_names=sans),
                validation_context_sds_secret_config=_sds(ca_name),
            ),
        )
    )
