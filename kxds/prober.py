"""Knative's readiness probe (knative-ingress-contract.md §9.4): every gateway pod must answer with
the Ingress's current hash before the Ingress is Ready.

Gateway pods are the ready addresses of the `kourier-internal` EndpointSlices. A pod connected to
this replica that has ACKed the Ingress's configuration counts without a probe (the fast path);
any other pod is probed on each of the Ingress's hosts, on the listener the prober would reach in
Knative: probe 8090 / 9443 for ExternalIP, internal 8081 / 8444 for ClusterLocal.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import structlog

from kxds.model.ingress import Ingress, Visibility
from kxds.settings import Ports

log = structlog.get_logger("kxds.prober")

GATEWAY_SERVICE = "kourier-internal"


@dataclass(frozen=True, slots=True)
class ProbeUrl:
    scheme: str
    host: str
    port: int


def probe_urls(ingress: Ingress, ports: Ports) -> list[ProbeUrl]:
    tls_hosts = {h for entry in ingress.tls for h in entry.hosts}
    urls = set()
    for rule in ingress.rules:
        for host in rule.hosts:
            secure = host in tls_hosts
            if rule.visibility is Visibility.EXTERNAL_IP:
                urls.add(ProbeUrl("https" if secure else "http", host, ports.probe_https if secure else ports.probe_http))
            else:
                urls.add(ProbeUrl("https" if secure else "http", host, ports.internal_https if secure else ports.internal_http))
    return sorted(urls, key=lambda u: (u.host, u.port))


class Prober:
    def __init__(self, ports: Ports, timeout: float = 1.0, concurrency: int = 15) -> None:
        self._ports = ports
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._passed: dict[str, tuple[str, set[str]]] = {}  # ingress key → (its hash, pods that served it)
        self._insecure = ssl.create_default_context()
        self._insecure.check_hostname, self._insecure.verify_mode = False, ssl.CERT_NONE

    def forget(self, keys: Iterable[str]) -> None:
        """These Ingresses are gone."""
        for key in keys:
            self._passed.pop(key, None)

    async def ready(self, ingress: Ingress, pods: Iterable[str], acked_pods: Iterable[str]) -> bool:
        """Does every gateway pod serve this Ingress's current hash? Probes what it must."""
        acked = set(acked_pods)
        known = self._passed.get(ingress.key)
        passed = known[1] if known is not None and known[0] == ingress.hash else set()  # another hash: probe again
        pending = [ip for ip in pods if ip not in acked and ip not in passed]
        if not pending:
            return True
        urls = probe_urls(ingress, self._ports)
        results = await asyncio.gather(*(self._pod(ingress, ip, urls) for ip in pending))
        return all(results)

    async def _pod(self, ingress: Ingress, ip: str, urls: list[ProbeUrl]) -> bool:
        async with aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
            outcomes = await asyncio.gather(*(self._probe(session, ingress, ip, url) for url in urls))
        if all(outcomes):
            known = self._passed.get(ingress.key)
            if known is None or known[0] != ingress.hash:
                known = self._passed[ingress.key] = (ingress.hash, set())
            known[1].add(ip)
            return True
        return False

    async def _probe(self, session: aiohttp.ClientSession, ingress: Ingress, ip: str, url: ProbeUrl) -> bool:
        headers = {"Host": url.host, "User-Agent": "Knative-Ingress-Probe", "K-Network-Probe": "probe", "K-Network-Hash": "override"}
        address = f"[{ip}]" if ":" in ip else ip
        async with self._limit:
            try:
                async with session.get(
                    f"{url.scheme}://{address}:{url.port}/healthz",
                    headers=headers,
                    ssl=self._insecure if url.scheme == "https" else False,
                    server_hostname=url.host if url.scheme == "https" else None,
                    allow_redirects=False,
                ) as response:
                    got = response.headers.get("K-Network-Hash")
                    if response.status == 200 and got is not None:
                        return got == ingress.hash  # another hash: the gateway is not there yet
                    if response.status in (404, 503):
                        return False  # retried on the next pass
                    # Knative accepts any other answer as best effort (a backend without the probe handler).
                    log.info("probe.best_effort", ingress=ingress.key, pod=ip, host=url.host, status=response.status)
                    return True
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                return False
