"""TLS for the xDS port: the server certificate, and with a CA, client certificates required
(mutual TLS between the gateways and kxds). Files are re-read when they change, so a rotated
certificate applies to new connections without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import grpc
import structlog

from kxds.pki import Authority, Leaf
from kxds.settings import XdsTls

log = structlog.get_logger("kxds.xds")


class _Files:
    def __init__(self, tls: XdsTls) -> None:
        self._tls = tls
        self._stamp = self._mtimes()

    def _paths(self) -> list[Path]:
        return [self._tls.cert, self._tls.key, *([self._tls.ca] if self._tls.ca else [])]

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(p.stat().st_mtime_ns for p in self._paths())

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = (self._tls.key.read_bytes(), self._tls.cert.read_bytes())
        ca = self._tls.ca.read_bytes() if self._tls.ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def changed(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each new handshake: a new configuration when the files changed."""
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            configuration = self.configuration()
        except (OSError, ValueError) as exc:
            log.error("xds.tls_reload_failed", error=str(exc))  # keep serving with the current files
            return None
        self._stamp = stamp
        log.info("xds.tls_reloaded", cert=str(self._tls.cert))
        return configuration


def server_credentials(tls: XdsTls) -> grpc.ServerCredentials:
    files = _Files(tls)
    return grpc.dynamic_ssl_server_credentials(files.configuration(), files.changed, require_client_authentication=tls.ca is not None)


class _Provisioned(Protocol):
    def server(self) -> tuple[Leaf, bool]: ...

    @property
    def authority(self) -> Authority: ...


def provisioned_credentials(pki: _Provisioned) -> grpc.ServerCredentials:
    """Mutual TLS with kxds's own CA: its gateways' certificates only, the server certificate
    re-issued when due (new handshakes get it; established streams keep theirs)."""

    def configuration(leaf: Leaf) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(leaf.key, leaf.cert)], root_certificates=pki.authority.pem)

    def changed() -> grpc.ServerCertificateConfiguration | None:
        leaf, reissued = pki.server()
        return configuration(leaf) if reissued else None

    return grpc.dynamic_ssl_server_credentials(configuration(pki.server()[0]), changed, require_client_authentication=True)


def peer_identity(context: grpc.aio.ServicerContext) -> str:
    """The verified identity of a TLS client (its certificate's common name, else its first
    subject alternative name); "" for a plaintext or unauthenticated peer."""
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key) or []
        if values:
            return bytes(values[0]).decode(errors="replace")
    return ""
