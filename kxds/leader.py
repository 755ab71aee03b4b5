"""Leader election on a coordination.k8s.io Lease: every replica serves xDS, only the leader writes.

As client-go does, expiry is judged by when *this* replica last saw the lease record change
(monotonic clock), not by comparing timestamps written by another machine, so clock skew between
replicas cannot make two leaders. Writes carry the lease's resourceVersion: a racing candidate
gets 409 Conflict and stays a follower. A leader that stops renewing is replaced once the lease
duration has passed; one that shuts down cleanly releases the lease for an immediate handover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog
import urllib3
from kubernetes import client

log = structlog.get_logger("kxds.leader")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseSettings:
    namespace: str
    identity: str
    name: str = "kxds-controller"
    duration_seconds: float = 15.0
    renew_every_seconds: float = 2.0


class LeaderElector:
    def __init__(self, api: client.ApiClient, settings: LeaseSettings, on_change: Callable[[bool], None] = lambda leader: None) -> None:
        self._leases = client.CoordinationV1Api(api)
        self._settings = settings
        self._on_change = on_change
        self._stop = threading.Event()
        self._seen: tuple[str | None, str | None] = (None, None)  # (holder, renewTime) last observed
        self._seen_at = 0.0
        self._renewed_at = 0.0
        self.is_leader = False

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._set(self._try_acquire_or_renew())
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.warning("leader.renew_failed", error=repr(exc))
                # Without a successful renewal for a whole lease duration, another replica may lead.
                if self.is_leader and time.monotonic() - self._renewed_at > self._settings.duration_seconds:
                    self._set(False)
            self._stop.wait(self._settings.renew_every_seconds)

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if release and self.is_leader:
            try:
                lease = self._leases.read_namespaced_lease(self._settings.name, self._settings.namespace)
                if lease.spec is not None and lease.spec.holder_identity == self._settings.identity:
                    body = {"metadata": {"resourceVersion": lease.metadata.resource_version if lease.metadata else None},
                            "spec": {"holderIdentity": None, "leaseDurationSeconds": 1}}
                    self._leases.patch_namespaced_lease(self._settings.name, self._settings.namespace, body)
                    log.info("leader.released", identity=self._settings.identity)
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("leader.release_failed", error=repr(exc))
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("leader.changed", leader=leader, identity=self._settings.identity)
            self._on_change(leader)

    def _try_acquire_or_renew(self) -> bool:
        s = self._settings
        now = datetime.now(timezone.utc)
        try:
            lease = self._leases.read_namespaced_lease(s.name, s.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=s.name, namespace=s.namespace),
                spec=client.V1LeaseSpec(holder_identity=s.identity, lease_duration_seconds=int(s.duration_seconds),
                                        acquire_time=now, renew_time=now, lease_transitions=0),
            )
            return self._write(lambda: self._leases.create_namespaced_lease(s.namespace, body))
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, str(spec.renew_time))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        duration = spec.lease_duration_seconds or s.duration_seconds
        expired = not spec.holder_identity or time.monotonic() - self._seen_at > duration
        if spec.holder_identity != s.identity and not expired:
            return False
        # A merge patch carrying the resourceVersion we read is conditional: a racing write gets 409.
        change: dict[str, object] = {"holderIdentity": s.identity, "renewTime": now, "leaseDurationSeconds": int(s.duration_seconds)}
        if spec.holder_identity != s.identity:
            change.update(acquireTime=now, leaseTransitions=(spec.lease_transitions or 0) + 1)
            log.info("leader.acquiring", identity=s.identity, previous=spec.holder_identity)
        patch = {"metadata": {"resourceVersion": lease.metadata.resource_version if lease.metadata else None}, "spec": change}
        return self._write(lambda: self._leases.patch_namespaced_lease(s.name, s.namespace, patch))

    def _write(self, call: Callable[[], object]) -> bool:
        try:
            call()
        except client.ApiException as exc:
            if exc.status == 409:  # another replica wrote first
                return False
            raise
        self._renewed_at = time.monotonic()
        return True
