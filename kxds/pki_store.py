"""Where the provisioned xDS CA and the gateways' bundle are kept: a directory, or Secrets.

The CA is created once, by whichever replica finds none (a Secret `create` is atomic, so racing
replicas agree on the first one); the gateways' bundle is re-issued by the leader when due.
"""

from __future__ import annotations

import base64
import datetime
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import structlog

from kxds.pki import CA_FILE, LEAF_LIFETIME, SDS_FILE, Authority, Leaf, PkiError, bundle_current, gateway_bundle

log = structlog.get_logger("kxds.pki")

# The CA is kept as `ca.crt` (the name gateways know it by in their bundle) and `ca.key`.
CA_KEY = "ca.key"


class Store(Protocol):
    def load_ca(self) -> tuple[bytes, bytes] | None: ...

    def create_ca(self, cert: bytes, key: bytes) -> None:
        """Store a new CA unless one exists (then keep the existing one)."""

    def load_gateway(self) -> dict[str, bytes] | None: ...

    def save_gateway(self, bundle: dict[str, bytes]) -> None: ...


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, readable by the owner only (a reader sees the old file or the new one)."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temp, path)


class DirectoryStore:
    """File mode: `DIR/ca.crt`, `DIR/ca.key`, and the gateways' bundle in `DIR/gateway/`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.gateway_dir = directory / "gateway"

    def load_ca(self) -> tuple[bytes, bytes] | None:
        try:
            return (self.directory / CA_FILE).read_bytes(), (self.directory / CA_KEY).read_bytes()
        except FileNotFoundError:
            return None

    def create_ca(self, cert: bytes, key: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.directory / CA_KEY, key)
        _write_private(self.directory / CA_FILE, cert)

    def load_gateway(self) -> dict[str, bytes] | None:
        try:
            return {p.name: p.read_bytes() for p in self.gateway_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
        except FileNotFoundError:
            return None

    def save_gateway(self, bundle: dict[str, bytes]) -> None:
        self.gateway_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The CA first and the SDS file last: Envoy re-reads it on each file moved into the directory.
        for name in sorted(bundle, key=lambda n: (n != CA_FILE, n == SDS_FILE)):
            _write_private(self.gateway_dir / name, bundle[name])


class SecretStore:
    """Kubernetes mode: the CA in Secret `ca_ref` (the controller's namespace, never mounted by a
    gateway), the gateways' bundle in Secret `gateway_ref` (the gateway namespace)."""

    def __init__(self, api: Any, ca_ref: str, gateway_ref: str) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self._client = client
        self.ca_ref, self.gateway_ref = ca_ref, gateway_ref

    def _read(self, ref: str) -> dict[str, bytes] | None:
        namespace, name = ref.split("/", 1)
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except self._client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _body(self, ref: str, data: dict[str, bytes]) -> Any:
        namespace, name = ref.split("/", 1)
        return self._client.V1Secret(
            metadata=self._client.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "kxds"}),
            type="Opaque", data={k: base64.b64encode(v).decode() for k, v in data.items()})

    def load_ca(self) -> tuple[bytes, bytes] | None:
        data = self._read(self.ca_ref)
        if data is None:
            return None
        if CA_FILE not in data or CA_KEY not in data:
            raise PkiError(f"Secret {self.ca_ref} lacks {CA_FILE} or {CA_KEY}")
        return data[CA_FILE], data[CA_KEY]

    def create_ca(self, cert: bytes, key: bytes) -> None:
        namespace = self.ca_ref.split("/", 1)[0]
        try:
            self._core.create_namespaced_secret(namespace, self._body(self.ca_ref, {CA_FILE: cert, CA_KEY: key}))
        except self._client.exceptions.ApiException as exc:
            if exc.status != 409:  # another replica created it first: theirs is the CA
                raise

    def load_gateway(self) -> dict[str, bytes] | None:
        return self._read(self.gateway_ref)

    def save_gateway(self, bundle: dict[str, bytes]) -> None:
        namespace, name = self.gateway_ref.split("/", 1)
        body = self._body(self.gateway_ref, bundle)
        try:
            self._core.replace_namespaced_secret(name, namespace, body)
        except self._client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            self._core.create_namespaced_secret(namespace, body)


class Provisioner:
    """The CA from the store (created on first start), this replica's server certificate (issued
    in memory, re-issued when due) and the gateways' bundle (re-issued when due)."""

    def __init__(self, store: Store, server_names: tuple[str, ...], lifetime: datetime.timedelta = LEAF_LIFETIME) -> None:
        self.store, self.server_names, self.lifetime = store, server_names, lifetime
        loaded = store.load_ca()
        if loaded is None:
            created = Authority.create()
            store.create_ca(created.pem, created.key_pem)
            loaded = store.load_ca()
            if loaded is None:
                raise PkiError("the xDS CA could not be stored")
            log.info("pki.ca_created")
        self.authority = Authority(*loaded)
        self._lock = threading.Lock()
        self._server = self.authority.issue_server(server_names, lifetime)
        self._server_due = self._server.due_at()

    def server(self) -> tuple[Leaf, bool]:
        """The current server certificate, and whether it was re-issued by this call. Called by
        gRPC before every handshake (any thread): cheap unless due."""
        with self._lock:
            if datetime.datetime.now(datetime.timezone.utc) < self._server_due:
                return self._server, False
            self._server = self.authority.issue_server(self.server_names, self.lifetime)
            self._server_due = self._server.due_at()
            log.info("pki.server_certificate_issued")
            return self._server, True

    def ensure_gateway_bundle(self) -> bool:
        """Write a new gateways' bundle if there is none, it trusts another CA or it is due."""
        if bundle_current(self.authority, self.store.load_gateway()):
            return False
        self.store.save_gateway(gateway_bundle(self.authority, self.authority.issue_gateway(self.lifetime)))
        log.info("pki.gateway_certificate_issued")
        return True
