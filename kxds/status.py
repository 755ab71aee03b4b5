"""Ingress status as Knative expects it (knative-ingress-contract.md §8), written only when it changes.

Conditions NetworkConfigured, LoadBalancerReady and Ready (sorted by type), `observedGeneration`
on every write, and Kourier's load-balancer hostnames. A condition's lastTransitionTime moves only
when its status does.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import structlog

from kxds.readiness import NO_GATEWAY, UNINITIALIZED, IngressStatus
from kxds.quarantine import ENVOY_REJECTED
from kxds.translate.gateway import BACKEND_NOT_FOUND, DOMAIN_CONFLICT, RECONCILE_FAILED

log = structlog.get_logger("kxds.status")

LB_WAITING = "Waiting for load balancer to be ready"
# Reasons that get a Kubernetes Event on the Ingress (`kubectl describe kingress` shows them), and
# the return to Ready. An Event is recorded when the reason or message changes, not per rebuild.
EVENT_REASONS = frozenset({RECONCILE_FAILED, DOMAIN_CONFLICT, BACKEND_NOT_FOUND, ENVOY_REJECTED})
READY_EVENT = "Ready"
# Record(namespace, name, uid, event type, reason, message)
Record = Callable[[str, str, str, str, str, str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancers:
    gateway_namespace: str = "kourier-system"
    cluster_domain: str = "cluster.local"

    def public(self) -> dict[str, Any]:
        return {"ingress": [{"domainInternal": f"kourier.{self.gateway_namespace}.svc.{self.cluster_domain}"}]}

    def private(self) -> dict[str, Any]:
        return {"ingress": [{"domainInternal": f"kourier-internal.{self.gateway_namespace}.svc.{self.cluster_domain}"}]}


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    out = {"type": kind, "status": status}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def conditions_for(status: IngressStatus) -> list[dict[str, str]]:
    """The three conditions for a readiness verdict, without timestamps."""
    if status.ready:
        network, balancer = _condition("NetworkConfigured", "True"), _condition("LoadBalancerReady", "True")
        ready = _condition("Ready", "True")
    elif status.reason == DOMAIN_CONFLICT:
        network = _condition("NetworkConfigured", "True")
        balancer = _condition("LoadBalancerReady", "False", status.reason, status.message)
        ready = _condition("Ready", "False", status.reason, status.message)
    elif status.reason in (UNINITIALIZED, NO_GATEWAY):
        network = _condition("NetworkConfigured", "True")
        balancer = _condition("LoadBalancerReady", "Unknown", UNINITIALIZED, status.message or LB_WAITING)
        ready = _condition("Ready", "Unknown", UNINITIALIZED, status.message or LB_WAITING)
    else:  # ReconcileIngressFailed, BackendNotFound, a rejected configuration
        reason = status.reason or RECONCILE_FAILED
        network = _condition("NetworkConfigured", "Unknown", reason, status.message)
        balancer = _condition("LoadBalancerReady", "Unknown", reason, status.message)
        ready = _condition("Ready", "Unknown", reason, status.message)
    return sorted([network, balancer, ready], key=lambda c: c["type"])


def desired_status(status: IngressStatus, generation: int, previous: Mapping[str, Any] | None, balancers: LoadBalancers,
                   now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> dict[str, Any]:
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or [] if isinstance(c, Mapping)}
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = []
    for condition in conditions_for(status):
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime")
        conditions.append({**condition, "lastTransitionTime": old["lastTransitionTime"] if same and old else stamp})
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "publicLoadBalancer": balancers.public(),
        "privateLoadBalancer": balancers.private(),
    }


def _comparable(status: Mapping[str, Any] | None) -> Any:
    """A status without timestamps, to decide whether a write is needed."""
    if not status:
        return None
    conditions = [{k: v for k, v in c.items() if k not in ("lastTransitionTime", "severity")} for c in status.get("conditions") or []]
    return {**status, "conditions": sorted(conditions, key=lambda c: str(c.get("type")))}


class RateLimiter:
    """client-go's token bucket: `qps` API calls a second on average, in bursts of up to `burst`."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._qps, self._burst, self._clock = qps, max(1, burst), clock
        self._tokens, self._last = float(self._burst), clock()

    async def acquire(self) -> None:
        while True:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self._qps)


# Status states that only the gateways catching up can move: re-checked on every pass.
_WAITING = ("", UNINITIALIZED, NO_GATEWAY)


class StatusWriter:
    """Keeps every owned Ingress's status in line with kxds's view, writing only differences.

    A pass looks only at what may have moved: Ingresses whose readiness moved (`mark`), whose
    object changed, and those still waiting for the gateways; `mark_all` (a new leader, gateways
    coming or going) looks at every one. Writes go out `workers` at a time, within the API rate.
    """

    def __init__(self, status_of: Callable[[str], IngressStatus | None], patch: Callable[[str, str, dict[str, Any]], None],
                 balancers: LoadBalancers, verify: Callable[[IngressStatus], Awaitable[bool]] | None = None,
                 record: Record | None = None, *, limiter: RateLimiter | None = None, workers: int = 8) -> None:
        self._status_of = status_of
        self._record = record
        # "ns/name" → (reason, message) of the last Event recorded for it.
        self._announced: dict[str, tuple[str, str]] = {}
        self._patch = patch
        self._balancers = balancers
        # Every gateway pod's own word (the hash probe) instead of this replica's ACKs alone.
        self._verify = verify
        self._limiter = limiter
        self._workers = workers
        # "ns/name" → what a write needs of the object as last seen.
        self.observed: dict[str, Observed] = {}
        self._dirty: set[str] = set()
        self._waiting: set[str] = set()
        self._all = True
        self.writes = 0

    def mark(self, keys: Iterable[str]) -> None:
        """These Ingresses' readiness moved: the next pass looks at them."""
        self._dirty.update(keys)

    def mark_all(self) -> None:
        self._all = True

    def observe(self, key: str, raw: Mapping[str, Any] | None) -> None:
        if raw is None:
            self.observed.pop(key, None)
            self._announced.pop(key, None)
            self._dirty.discard(key)
            self._waiting.discard(key)
            return
        before = self.observed.get(key)
        now = self.observed[key] = Observed.of(raw)
        # The echo of our own write changes nothing; a new generation or someone else's status does.
        if (before is None or before.generation != now.generation
                or (before.status_zip != now.status_zip and _comparable(before.status) != _comparable(now.status))):
            self._dirty.add(key)

    async def sync(self) -> int:
        """Write what differs among what may have moved; returns how many Ingresses were written."""
        keys = set(self.observed) if self._all else (self._dirty | self._waiting) & self.observed.keys()
        self._all, self._dirty = False, set()
        if not keys:
            return 0
        slots = asyncio.Semaphore(self._workers)

        async def one(key: str) -> bool:
            async with slots:
                return await self._reconcile(key)

        written = sum(await asyncio.gather(*(one(key) for key in sorted(keys))))
        self.writes += written
        return written

    async def _reconcile(self, key: str) -> bool:
        status, seen = self._status_of(key), self.observed.get(key)
        if status is None or seen is None:
            self._waiting.discard(key)
            return False
        if self._verify is not None and status.reason in _WAITING:
            ready = await self._verify(status)
            status = replace(status, ready=ready, reason="" if ready else UNINITIALIZED, message="" if ready else LB_WAITING)
        (self._waiting.discard if status.ready or status.reason not in _WAITING else self._waiting.add)(key)
        await self._announce(status, seen.uid)
        generation = seen.generation
        current = seen.status
        wanted = desired_status(status, generation, current, self._balancers)
        if _comparable(current) == _comparable(wanted):
            return False
        try:
            if self._limiter is not None:
                await self._limiter.acquire()
            await asyncio.to_thread(self._patch, status.namespace, status.name, {"status": wanted})
        except Exception as exc:  # retried on the next pass; one failed write must not stop the others
            log.warning("status.write_failed", ingress=key, error=repr(exc))
            self._dirty.add(key)
            return False
        # Remember what we wrote so the same status is not written again before the watch echoes it.
        if key in self.observed:
            self.observed[key] = replace(seen, status_zip=_compact(wanted))
        log.info("status.written", ingress=key, generation=generation, ready=status.ready, reason=status.reason)
        return True

    async def _announce(self, status: IngressStatus, uid: str) -> None:
        """An Event for a failure reason, or for the return to Ready after one; once per change."""
        key = f"{status.namespace}/{status.name}"
        if self._record is None:
            return
        if status.ready:
            if self._announced.get(key, (READY_EVENT, ""))[0] == READY_EVENT:
                return  # never failed, or already announced as ready
            kind, reason, message = "Normal", READY_EVENT, "Ingress is ready: every gateway serves its current configuration"
        elif status.reason in EVENT_REASONS:
            kind, reason, message = "Warning", status.reason, status.message
        else:
            return
        if self._announced.get(key) == (reason, message):
            return
        try:
            if self._limiter is not None:
                await self._limiter.acquire()
            await asyncio.to_thread(self._record, status.namespace, status.name, uid, kind, reason, message[:1024])
        except Exception as exc:  # an Event is best effort; the next change records again
            log.warning("event.write_failed", ingress=key, reason=reason, error=repr(exc))
            return
        self._announced[key] = (reason, message)


@dataclass(frozen=True, slots=True)
class Observed:
    """What a status write reads of an Ingress as last seen: its generation, its uid (for Events) and
    its status. Not the whole object as the API serves it (spec, annotations, managedFields: tens of
    kilobytes decoded), and the status as compressed compact JSON: decoded, three conditions and two
    load balancers are ~3 KB of dicts and strings per Ingress (33 MiB at 10,000, measured), the JSON
    ~550 bytes, compressed ~250."""

    generation: int
    uid: str
    status_zip: bytes  # empty when it has none

    @staticmethod
    def of(raw: Mapping[str, Any]) -> Observed:
        metadata = raw.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        return Observed(int(metadata.get("generation") or 0), str(metadata.get("uid") or ""), _compact(raw.get("status")))

    @property
    def status(self) -> dict[str, Any] | None:
        return json.loads(zlib.decompress(self.status_zip)) if self.status_zip else None


def _compact(status: Any) -> bytes:
    # Sorted keys: the same status is the same bytes, so the echo of a write is seen without decoding.
    return zlib.compress(json.dumps(status, sort_keys=True, separators=(",", ":")).encode()) if status else b""
