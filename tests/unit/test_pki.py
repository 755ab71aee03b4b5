"""kxds's xDS CA: what it issues, what the gateways' bundle holds, when a certificate is due."""

from __future__ import annotations

import datetime
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kxds.pki import GATEWAY_IDENTITY, GATEWAY_SDS_SECRET, Authority, bundle_current, bundle_leaf, gateway_bundle
from kxds.pki_store import DirectoryStore, Provisioner


def test_server_and_gateway_certificates_are_issued_for_their_use() -> None:
    authority = Authority.create()
    server = x509.load_pem_x509_certificate(authority.issue_server(["localhost", "127.0.0.1"]).cert)
    gateway = x509.load_pem_x509_certificate(authority.issue_gateway().cert)
    assert server.issuer == gateway.issuer == authority.certificate.subject
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"] and [str(i) for i in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(gateway.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert gateway.subject.rfc4514_string() == f"CN={GATEWAY_IDENTITY}"


def test_the_bundle_is_an_sds_file_envoy_reads_and_pem_files_for_tools() -> None:
    authority = Authority.create()
    leaf = authority.issue_gateway()
    bundle = gateway_bundle(authority, leaf)
    assert bundle["ca.crt"] == authority.pem and bundle["tls.crt"] == leaf.cert and bundle["tls.key"] == leaf.key
    (secret,) = yaml.safe_load(bundle["sds.yaml"])["resources"]
    assert secret["name"] == GATEWAY_SDS_SECRET and secret["@type"].endswith("tls.v3.Secret")
    assert bundle_leaf(bundle) == leaf and bundle_current(authority, bundle)
    assert not bundle_current(Authority.create(), bundle)  # it trusts another CA: re-issue


def test_due_at_two_thirds_of_the_lifetime() -> None:
    leaf = Authority.create().issue_gateway(datetime.timedelta(days=90))
    due = leaf.due_at() - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=59) < due < datetime.timedelta(days=61) and not leaf.due()


def test_the_ca_is_created_once_and_kept(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "pki")
    first = Provisioner(store, ("localhost",))
    assert first.ensure_gateway_bundle() is True  # none yet: written
    assert first.ensure_gateway_bundle() is False  # current: kept
    second = Provisioner(store, ("localhost",))  # a restart
    assert second.authority.pem == first.authority.pem and second.ensure_gateway_bundle() is False
    assert (tmp_path / "pki" / "ca.key").stat().st_mode & 0o077 == 0  # the CA key is the owner's only
