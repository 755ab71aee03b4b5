"""Churn under load: steady traffic through a real Envoy for 60 s (KXDS_CHURN_SECONDS) while
Ingresses are created, updated and deleted every second, the steady route is updated, and its
endpoints flip between two backends. Routes that exist throughout see no 5xx and no connection
error. Run with -s to see the latency percentiles."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, wait_until

pytestmark = pytest.mark.e2e
NS = "churn"
STEADY = "steady.churn.example.com"
SECONDS = float(os.environ.get("KXDS_CHURN_SECONDS", "60"))


class Load:
    """Keep-alive HTTP/1.1 clients on their own event loop: outcomes and latencies of every request."""

    def __init__(self, port: int, host: str, concurrency: int = 8) -> None:
        self.port, self.host, self.concurrency = port, host, concurrency
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency)) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        url = f"http://{LOCAL}:{self.port}/"
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                async with session.get(url, headers={"Host": self.host}, timeout=aiohttp.ClientTimeout(total=10)) as response:
                    await response.read()
                    self.outcomes[str(response.status)] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.outcomes[type(exc).__name__] += 1
            self.latencies.append(time.perf_counter() - started)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[round(q * 1000) - 1] if len(values) > 1 else values[0]


def test_churn_under_load(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        ports = {name: stack.backends.start(name) for name in ("blue", "green")}
        objects = [service("steady", NS, target=ports["blue"]), service("other", NS, target=ports["green"])]
        objects += [endpoint_slice("other", [LOCAL], ports["green"], NS)]
        stack.plane.write("services.yaml", objects)

        def steady_endpoints(color: str) -> None:
            stack.plane.write("steady-endpoints.yaml", [endpoint_slice("steady", [LOCAL], ports[color], NS)])

        def steady_ingress(version: int) -> None:
            # Updated in place: the split moves between two Services and its header changes.
            target = "steady" if version % 2 == 0 else "other"
            doc = ingress("steady", rule([STEADY], path(split(target, namespace=NS), append={"X-Version": str(version)})), namespace=NS)
            stack.plane.write("steady.yaml", [doc])

        steady_endpoints("blue")
        steady_ingress(0)
        stack.plane.wait_ready(f"{NS}/steady")

        with Load(stack.ports.external, STEADY) as load:
            deadline = time.monotonic() + SECONDS
            second = 0
            while time.monotonic() < deadline:
                second += 1
                # Every second: one Ingress created, the previous one updated, an older one deleted.
                stack.plane.write(f"churn-{second}.yaml", [ingress(f"churn-{second}", rule([f"c{second}.churn.example.com"], path(split("other", namespace=NS))), namespace=NS)])
                if second > 1:
                    stack.plane.write(f"churn-{second - 1}.yaml", [ingress(f"churn-{second - 1}", rule([f"c{second - 1}.churn.example.com"], path(split("other", namespace=NS), append={"X-Updated": "1"})), namespace=NS)])
                if second > 3:
                    stack.plane.remove(f"churn-{second - 3}.yaml")
                steady_endpoints("green" if second % 2 else "blue")  # a scale-from-zero style flip
                if second % 3 == 0:
                    steady_ingress(second)
                time.sleep(1.0)
        total = sum(load.outcomes.values())
        latencies_ms = sorted(x * 1000 for x in load.latencies)
        summary = (f"churn: {total} requests in {SECONDS:.0f} s ({total / SECONDS:.0f}/s), outcomes {dict(load.outcomes)}, latency ms "
                   f"p50 {percentile(latencies_ms, 0.5):.1f} p90 {percentile(latencies_ms, 0.9):.1f} "
                   f"p99 {percentile(latencies_ms, 0.99):.1f} max {latencies_ms[-1]:.1f}")
        print(summary)
        assert load.outcomes.keys() == {"200"}, summary
        assert total / SECONDS >= 100, summary  # hundreds of requests per second, not a trickle
        # The churn itself kept converging: the last Ingress created is served.
        stack.plane.wait_ready(f"{NS}/churn-{second}")
        wait_until(lambda: stack.plane.ingresses()[f"{NS}/steady"]["ready"], what="the steady Ingress to be ready")
    finally:
        stack.close()
