"""The status writer's passes: only what may have moved is looked at, writes go out concurrently
within a bound, and the API rate limit holds."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from typing import Any

from kxds.readiness import UNINITIALIZED, IngressStatus
from kxds.status import LoadBalancers, Observed, RateLimiter, StatusWriter


def status(name: str, ready: bool) -> IngressStatus:
    return IngressStatus(namespace="ns", name=name, ready=ready, reason="" if ready else UNINITIALIZED,
                         message="" if ready else "Waiting for load balancer to be ready", hash="h", hosts=())


class Cluster:
    """What the writer reads (statuses, counted) and writes (patches, with how many at once)."""

    def __init__(self, count: int, delay: float = 0.0) -> None:
        self.statuses = {f"ns/i{n}": status(f"i{n}", ready=True) for n in range(count)}
        self.looked: list[str] = []
        self.patched: list[str] = []
        self.delay, self.in_flight, self.most = delay, 0, 0
        self._lock = threading.Lock()

    def status_of(self, key: str) -> IngressStatus | None:
        self.looked.append(key)
        return self.statuses.get(key)

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
            self.patched.append(f"{namespace}/{name}")


def writer_for(cluster: Cluster, **options: Any) -> StatusWriter:
    writer = StatusWriter(cluster.status_of, cluster.patch, LoadBalancers(), **options)
    for key in cluster.statuses:
        writer.observe(key, {"metadata": {"name": key.split("/")[1], "namespace": "ns", "generation": 1}})
    return writer


async def test_a_pass_looks_only_at_what_may_have_moved() -> None:
    cluster = Cluster(50)
    cluster.statuses["ns/i7"] = status("i7", ready=False)
    writer = writer_for(cluster)
    assert await writer.sync() == 50  # a new writer (a new leader) looks at every Ingress
    cluster.looked.clear()
    assert await writer.sync() == 0
    assert cluster.looked == ["ns/i7"]  # only the one still waiting for the gateways
    cluster.statuses["ns/i7"] = status("i7", ready=True)
    cluster.statuses["ns/i3"] = status("i3", ready=False)
    cluster.looked.clear()
    writer.mark(["ns/i3"])  # its readiness moved
    assert await writer.sync() == 2
    assert sorted(cluster.looked) == ["ns/i3", "ns/i7"]
    # The watch echoing what was written (in the API server's own key order) is no change; a new generation is.
    written = writer.observed["ns/i5"].status
    assert written is not None
    writer.observe("ns/i5", {"metadata": {"name": "i5", "namespace": "ns", "generation": 1},
                             "status": dict(reversed([(k, v) for k, v in written.items()]))})
    cluster.looked.clear()
    await writer.sync()
    assert "ns/i5" not in cluster.looked
    writer.observe("ns/i5", {"metadata": {"name": "i5", "namespace": "ns", "generation": 2}, "status": written})
    assert await writer.sync() == 1 and "ns/i5" in cluster.looked
    writer.mark_all()
    cluster.looked.clear()
    await writer.sync()
    assert len(cluster.looked) == 50


async def test_writes_go_out_concurrently_within_the_bound() -> None:
    cluster = Cluster(24, delay=0.05)
    assert await writer_for(cluster, workers=4).sync() == 24
    assert cluster.most == 4
    assert sorted(cluster.patched) == sorted(cluster.statuses)


async def test_a_failed_write_is_retried_on_the_next_pass() -> None:
    cluster = Cluster(3)
    failing = {"ns/i1"}

    def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        if f"{namespace}/{name}" in failing:
            raise RuntimeError("503 from the API server")
        cluster.patch(namespace, name, body)

    writer = StatusWriter(cluster.status_of, patch, LoadBalancers())
    for key in cluster.statuses:
        writer.observe(key, {"metadata": {"generation": 1}})
    assert await writer.sync() == 2
    failing.clear()
    assert await writer.sync() == 1 and cluster.patched[-1] == "ns/i1"


async def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(qps=20, burst=3)
    started = time.monotonic()
    for _ in range(3):
        await limiter.acquire()
    assert time.monotonic() - started < 0.045  # the burst: no wait (a fourth token would take 50 ms)
    for _ in range(4):
        await limiter.acquire()
    assert time.monotonic() - started >= 4 / 20 - 0.01  # then 20 a second
    await asyncio.sleep(0)


async def test_the_writer_keeps_only_what_a_write_reads_of_each_ingress() -> None:
    """10,000 Ingresses as the API serves them (spec, annotations, managedFields) are hundreds of
    megabytes decoded: the writer keeps generation, uid and status, and still writes and records
    Events from them."""
    cluster = Cluster(1)
    cluster.statuses["ns/i0"] = status("i0", ready=False)
    recorded: list[tuple[str, ...]] = []
    writer = StatusWriter(cluster.status_of, cluster.patch, LoadBalancers(), record=lambda *event: recorded.append(event))
    bulky = {"metadata": {"name": "i0", "namespace": "ns", "generation": 3, "uid": "u-1", "managedFields": [{"f": "x" * 4096}],
                          "annotations": {"a": "b" * 4096}},
             "spec": {"rules": [{"hosts": ["h" * 200] * 20}]}, "status": {"observedGeneration": 2}}
    writer.observe("ns/i0", bulky)
    assert writer.observed["ns/i0"] == Observed(generation=3, uid="u-1", status_zip=zlib.compress(b'{"observedGeneration":2}'))
    cluster.statuses["ns/i0"] = IngressStatus(namespace="ns", name="i0", ready=False, reason="BackendNotFound", message="gone", hash="h", hosts=())
    assert await writer.sync() == 1
    assert (writer.observed["ns/i0"].status or {})["observedGeneration"] == 3
    assert [(e[2], e[4]) for e in recorded] == [("u-1", "BackendNotFound")]
