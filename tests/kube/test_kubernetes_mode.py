"""Kubernetes mode end to end: kmock's emulator as the API server, driven through the official
`kubernetes` client; `kxds serve --kubernetes` as a real process; a real Envoy; curl."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from kmock import Server
from kubernetes import client

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import Backends, ControlPlane, Gateway, ListenerPorts, curl
from tests.kube.emulator import VersionedEmulator

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "kube"
GROUP, VERSION, PLURAL = "networking.internal.knative.dev", "v1alpha1", "ingresses"


async def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Await `check()` until it returns something truthy; the emulator keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Cluster:
    def __init__(self, emulator: VersionedEmulator, api: client.ApiClient, stack: Stack) -> None:
        self.emulator = emulator
        self.core, self.discovery, self.custom = client.CoreV1Api(api), client.DiscoveryV1Api(api), client.CustomObjectsApi(api)
        self.stack = stack

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The emulator answers on this event loop: blocking client calls go to a thread.
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def backend(self, name: str) -> None:
        port = await asyncio.to_thread(self.stack.backends.start, name)
        await self.call(self.core.create_namespaced_service, NS, service(name, NS, target=port))
        await self.call(self.discovery.create_namespaced_endpoint_slice, NS, endpoint_slice(name, ["127.0.0.1"], port, NS))

    async def create_ingress(self, doc: dict[str, Any]) -> None:
        await self.call(self.custom.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, doc)

    async def get_ingress(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(self.custom.get_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, name)
        return result

    async def until(self, check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        return await until(check, timeout, what)

    async def ready_status(self, name: str, generation: int) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            status = (await self.get_ingress(name)).get("status") or {}
            ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
            return status if status.get("observedGeneration") == generation and ready == "True" else None

        result: dict[str, Any] = await self.until(check, what=f"Ingress {name} generation {generation} Ready")
        return result

    async def curl(self, host: str, *headers: str) -> Any:
        return await asyncio.to_thread(curl, self.stack.ports.external, host, "/", list(headers))

    def status_writes(self, name: str) -> int:
        return sum(1 for r in list(self.emulator.log) if r.method == "PATCH" and r.subresource == "status" and r.name == name)


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
    }))
    return path


class KubeStack(Stack):
    """kxds in Kubernetes mode against the emulator, one Envoy, and backends."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.workdir = workdir
        self.ports = ListenerPorts()
        self.backends = Backends()
        config = kubeconfig(workdir / "kubeconfig", url)
        # Credentials found the way kubectl finds them: $KUBECONFIG, and a context picked by name.
        self.plane = ControlPlane(workdir, self.ports, ["--kubernetes", "--context", "kmock", "--gateway-namespace", "kourier-system"],
                                  env={"KUBECONFIG": str(config)})
        self.gateway = Gateway(workdir, self.plane)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with VersionedEmulator() as emulator, Server(emulator) as server:
        # Declare the kinds kxds lists (the emulator 404s unknown resources).
        for declared in ("v1/services", "v1/secrets", "v1/configmaps", "v1/events", "discovery.k8s.io/v1/endpointslices", "coordination.k8s.io/v1/leases", f"{GROUP}/{VERSION}/{PLURAL}"):
            emulator.resources[declared] = {"namespaced": True}
        url = str(server.url).rstrip("/")
        api = client.ApiClient(client.Configuration(host=url))
        stack = await asyncio.to_thread(KubeStack, tmp_path_factory.mktemp("kube"), url)
        try:
            yield Cluster(emulator, api, stack)
        finally:
            await asyncio.to_thread(stack.close)
            api.close()


async def test_objects_flow_from_the_cluster_to_envoy(cluster: Cluster) -> None:
    await cluster.backend("flow-a")
    await cluster.backend("flow-b")
    host = "flow.example.com"
    doc = ingress("flow", rule([host], path(split("flow-a", namespace=NS, Who="a"))), namespace=NS)
    await cluster.create_ingress(doc)
    await cluster.ready_status("flow", 1)
    assert (await cluster.curl(host)).request_header("Who") == "a"
    # Update: a new generation, its status, and the new route on the first request after Ready.
    await cluster.call(cluster.custom.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "flow",
                       {"spec": ingress("flow", rule([host], path(split("flow-b", namespace=NS, Who="b"))), namespace=NS)["spec"]})
    await cluster.ready_status("flow", 2)
    reply = await cluster.curl(host)
    assert reply.request_header("Who") == "b" and reply.json()["server"]["name"] == "flow-b"
    # Endpoints move: EndpointSlice updates reach Envoy (EDS).
    port = await asyncio.to_thread(cluster.stack.backends.start, "flow-b2")
    await cluster.call(cluster.discovery.patch_namespaced_endpoint_slice, "flow-b-abc", NS, {"ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
    await cluster.until(lambda: _served_by(cluster, host, "flow-b2"), what="the new endpoint")
    # Delete: the route goes away.
    await cluster.call(cluster.custom.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "flow")
    await cluster.until(lambda: _status_is(cluster, host, 404), what="the route to go away")


async def _served_by(cluster: Cluster, host: str, name: str) -> bool:
    return bool((await cluster.curl(host)).json()["server"]["name"] == name)


async def _status_is(cluster: Cluster, host: str, status: int) -> bool:
    return bool((await cluster.curl(host)).status == status)


async def test_status_is_knatives_and_written_only_on_change(cluster: Cluster) -> None:
    await cluster.backend("stat")
    await cluster.create_ingress(ingress("stat", rule(["stat.example.com"], path(split("stat", namespace=NS))), namespace=NS))
    status = await cluster.ready_status("stat", 1)
    assert [c["type"] for c in status["conditions"]] == ["LoadBalancerReady", "NetworkConfigured", "Ready"]
    assert all(c["status"] == "True" and c["lastTransitionTime"].endswith("Z") for c in status["conditions"])
    assert status["publicLoadBalancer"] == {"ingress": [{"domainInternal": "kourier.kourier-system.svc.cluster.local"}]}
    assert status["privateLoadBalancer"] == {"ingress": [{"domainInternal": "kourier-internal.kourier-system.svc.cluster.local"}]}
    writes = cluster.status_writes("stat")
    await asyncio.sleep(1.5)
    assert cluster.status_writes("stat") == writes, "an unchanged status must not be written again"


async def test_problems_are_reported_in_the_status(cluster: Cluster) -> None:
    await cluster.backend("owner")
    await cluster.create_ingress(ingress("owner", rule(["shared.example.com"], path(split("owner", namespace=NS))), namespace=NS, created="2026-01-01T00:00:00Z"))
    await cluster.ready_status("owner", 1)
    late = ingress("late", rule(["shared.example.com"], path(split("owner", namespace=NS))), namespace=NS)
    late["metadata"]["creationTimestamp"] = "2026-06-01T00:00:00Z"
    await cluster.create_ingress(late)
    broken = ingress("broken", rule(["broken.example.com"], path(split("owner", 60, namespace=NS))), namespace=NS)
    await cluster.create_ingress(broken)

    async def conditions(name: str) -> dict[str, dict[str, str]]:
        return {c["type"]: c for c in ((await cluster.get_ingress(name)).get("status") or {}).get("conditions", [])}

    conflict = await cluster.until(lambda: _with_reason(conditions("late"), "DomainConflict"), what="DomainConflict")
    assert conflict["LoadBalancerReady"]["status"] == "False" and conflict["Ready"]["status"] == "False"
    failed = await cluster.until(lambda: _with_reason(conditions("broken"), "ReconcileIngressFailed"), what="ReconcileIngressFailed")
    assert failed["Ready"]["status"] == "Unknown" and "add up to 100, got 60" in failed["Ready"]["message"]
    assert (await cluster.get_ingress("broken"))["status"]["observedGeneration"] == 1


async def _with_reason(pending: Any, reason: str) -> Any:
    conditions = await pending
    return conditions if conditions.get("Ready", {}).get("reason") == reason else None


async def test_another_class_is_never_touched(cluster: Cluster) -> None:
    await cluster.backend("theirs")
    names = []
    for i, annotations in enumerate([None, {}, {"networking.knative.dev/ingress.class": "istio.ingress.networking.knative.dev"}]):
        doc = ingress(f"theirs-{i}", rule([f"theirs{i}.example.com"], path(split("theirs", namespace=NS))), namespace=NS, ingress_class=None)
        if annotations is not None:
            doc["metadata"]["annotations"] = annotations
        await cluster.create_ingress(doc)
        names.append(f"theirs-{i}")
    before = {n: await cluster.get_ingress(n) for n in names}
    await asyncio.sleep(2)
    for name in names:
        assert await cluster.get_ingress(name) == before[name]
        assert "status" not in before[name] and cluster.status_writes(name) == 0
    assert (await cluster.curl("theirs0.example.com")).status == 404


async def test_a_watch_that_expires_is_relisted_without_losing_events(cluster: Cluster) -> None:
    await cluster.backend("relist")
    await cluster.create_ingress(ingress("relist-1", rule(["relist1.example.com"], path(split("relist", namespace=NS))), namespace=NS))
    await cluster.ready_status("relist-1", 1)
    lists_before = sum(1 for r in list(cluster.emulator.log) if r.resource is not None and r.resource.plural == PLURAL and "watch" not in r.params)
    # History is compacted: the open watch ends with 410 and the old version cannot be resumed.
    # Lists are held meanwhile, so these changes happen while kxds has no watch at all.
    cluster.emulator.hold_lists(PLURAL)
    cluster.emulator.expire(PLURAL)
    await cluster.create_ingress(ingress("relist-2", rule(["relist2.example.com"], path(split("relist", namespace=NS))), namespace=NS))
    await cluster.call(cluster.custom.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "relist-1")
    await asyncio.sleep(0.3)
    assert (await cluster.curl("relist1.example.com")).status == 200  # kxds has not seen anything yet
    cluster.emulator.release_lists(PLURAL)
    await cluster.ready_status("relist-2", 1)
    await cluster.until(lambda: _status_is(cluster, "relist1.example.com", 404), what="the deleted Ingress to go")
    assert (await cluster.curl("relist2.example.com")).status == 200
    lists_after = sum(1 for r in list(cluster.emulator.log) if r.resource is not None and r.resource.plural == PLURAL and "watch" not in r.params)
    assert lists_after > lists_before, "a 410 must lead to a fresh list"
    resumed = [w for w in cluster.emulator.watch_requests if w.get("resourceVersion", "").isdigit()]
    assert resumed, "watches resume from the last resourceVersion"
    assert json.dumps(resumed[-1]).count("allowWatchBookmarks") == 1


async def test_secrets_and_services_flow_too(cluster: Cluster) -> None:
    from tests.certificates import CertificateAuthority, tls_secret
    from tests.e2e.test_tls import served_serial

    await cluster.backend("secure")
    ca, host = CertificateAuthority(), "secure.example.com"
    cert, key, first = ca.issue(host)
    await cluster.call(cluster.core.create_namespaced_secret, NS, tls_secret("secure-cert", NS, cert, key))
    doc = ingress("secure", rule([host], path(split("secure", namespace=NS))), namespace=NS)
    doc["spec"]["tls"] = [{"hosts": [host], "secretName": "secure-cert", "secretNamespace": NS}]
    await cluster.create_ingress(doc)
    await cluster.ready_status("secure", 1)
    port = cluster.stack.ports.external_tls
    assert await asyncio.to_thread(served_serial, port, host) == first
    # A rotated Secret reaches the gateway.
    cert, key, second = ca.issue(host)
    await cluster.call(cluster.core.patch_namespaced_secret, "secure-cert", NS, {"stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()}})
    await cluster.until(lambda: _serial_is(port, host, second), what="the rotated certificate")
    # A deleted Service: the Ingress reports it instead of routing to nothing.
    await cluster.call(cluster.core.delete_namespaced_service, "secure", NS)

    async def reason() -> str | None:
        ready = {c["type"]: c for c in ((await cluster.get_ingress("secure")).get("status") or {}).get("conditions", [])}.get("Ready", {})
        return ready.get("reason") if ready.get("reason") == "BackendNotFound" else None

    assert await cluster.until(reason, what="BackendNotFound")


async def _serial_is(port: int, host: str, serial: int) -> bool:
    from tests.e2e.test_tls import served_serial

    return await asyncio.to_thread(served_serial, port, host) == serial


async def test_kxds_provisions_its_ca_and_the_gateways_bundle_as_secrets(cluster: Cluster) -> None:
    ca = await cluster.call(cluster.core.read_namespaced_secret, "kxds-xds-ca", "knative-serving")
    bundle = await cluster.call(cluster.core.read_namespaced_secret, "kxds-gateway-xds", "kourier-system")
    assert set(ca.data) == {"ca.crt", "ca.key"}
    assert {"ca.crt", "sds.yaml", "tls.crt", "tls.key"} <= set(bundle.data)
    assert bundle.data["ca.crt"] == ca.data["ca.crt"] and "ca.key" not in bundle.data  # gateways never see the CA's key
    # The gateway in this stack connected with that bundle (mounted as kubelet would).
    assert cluster.stack.plane.gateways() and all(g["identity"] == "kxds-gateway" for g in cluster.stack.plane.gateways())


async def test_failures_and_the_return_to_ready_are_kubernetes_events_once_each(cluster: Cluster) -> None:
    await cluster.create_ingress(ingress("evented", rule(["evented.example.com"], path(split("evented-svc", namespace=NS))), namespace=NS))

    async def events() -> list[Any]:
        listed = await cluster.call(cluster.core.list_namespaced_event, NS)
        return [e for e in listed.items if e.involved_object.name == "evented" and e.involved_object.kind == "Ingress"]

    async def reasons() -> list[str]:
        return [e.reason for e in await events()]

    assert await cluster.until(lambda: _having(reasons(), "BackendNotFound"), what="a BackendNotFound event")
    await cluster.backend("evented-svc")
    assert await cluster.until(lambda: _having(reasons(), "Ready"), what="the Ready event")
    await asyncio.sleep(2.5)  # several more status passes: nothing is recorded again
    recorded = await events()
    assert [e.reason for e in recorded] == ["BackendNotFound", "Ready"], [(e.reason, e.message) for e in recorded]
    warning, normal = recorded
    assert warning.type == "Warning" and f"Service {NS}/evented-svc not found" in warning.message
    assert normal.type == "Normal" and warning.involved_object.api_version == f"{GROUP}/{VERSION}"
    assert warning.source.component == "kxds"


async def _having(pending: Any, reason: str) -> bool:
    return reason in await pending
