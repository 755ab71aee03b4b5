"""Two replicas: both serve xDS, only the Lease holder writes status, and leadership moves within
seconds when the leader is killed. The first leader has no gateway of its own, so the Ready it
writes can only come from probing the gateway pod (Knative's hash probe)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from kmock import Server
from kubernetes import client

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import Backends, ControlPlane, Gateway, ListenerPorts
from tests.kube.emulator import VersionedEmulator
from tests.kube.test_kubernetes_mode import GROUP, NS, PLURAL, VERSION, kubeconfig, until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
LEASE = ["--lease-duration", "2", "--lease-renew-interval", "0.3"]


async def test_only_the_leader_writes_and_leadership_moves(tmp_path: Path) -> None:
    async with VersionedEmulator() as emulator, Server(emulator) as server:
        for declared in ("v1/services", "v1/secrets", "v1/configmaps", "discovery.k8s.io/v1/endpointslices",
                         "coordination.k8s.io/v1/leases", f"{GROUP}/{VERSION}/{PLURAL}"):
            emulator.resources[declared] = {"namespaced": True}
        api = client.ApiClient(client.Configuration(host=str(server.url).rstrip("/")))
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        custom, leases = client.CustomObjectsApi(api), client.CoordinationV1Api(api)
        config = kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))
        ports, backends = ListenerPorts(), Backends()
        replicas: dict[str, ControlPlane] = {}
        gateway = None

        def start(name: str) -> ControlPlane:
            workdir = tmp_path / name
            workdir.mkdir()
            return ControlPlane(workdir, ports, ["--kubernetes", "--kubeconfig", str(config), "--identity", name, *LEASE])

        async def holder() -> str | None:
            try:
                lease = await asyncio.to_thread(leases.read_namespaced_lease, "kxds-controller", "knative-serving")
            except client.ApiException:
                return None
            return lease.spec.holder_identity if lease.spec else None

        async def ready_writer(name: str) -> str | None:
            obj = await asyncio.to_thread(custom.get_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, name)
            ready = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}.get("Ready")
            if ready != "True":
                return None
            writes = [r for r in emulator.log if r.subresource == "status" and r.name == name]
            return writes[-1].headers.get("User-Agent", "") if writes else None

        async def publish(name: str) -> None:
            port = await asyncio.to_thread(backends.start, name)
            await asyncio.to_thread(core.create_namespaced_service, NS, service(name, NS, target=port))
            await asyncio.to_thread(discovery.create_namespaced_endpoint_slice, NS, endpoint_slice(name, ["127.0.0.1"], port, NS))
            doc = ingress(name, rule([f"{name}.example.com"], path(split(name, namespace=NS))), namespace=NS)
            await asyncio.to_thread(custom.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, doc)

        try:
            # The gateway pod, as Knative's prober finds it: kourier-internal's EndpointSlice.
            gateway_slice = endpoint_slice("kourier-internal", ["127.0.0.1"], ports.internal, "kourier-system")
            await asyncio.to_thread(discovery.create_namespaced_endpoint_slice, "kourier-system", gateway_slice)
            replicas["kxds-b"] = await asyncio.to_thread(start, "kxds-b")
            assert await until(lambda: _is(holder(), "kxds-b"), what="kxds-b to lead")
            replicas["kxds-a"] = await asyncio.to_thread(start, "kxds-a")
            gateway = await asyncio.to_thread(Gateway, tmp_path, replicas["kxds-a"])

            await publish("first")
            writer = await until(lambda: ready_writer("first"), what="first to be Ready")
            assert "(kxds-b)" in writer, writer  # the leader, which could only have probed the gateway
            status_writers = {r.headers.get("User-Agent", "") for r in emulator.log if r.subresource == "status"}
            assert all("(kxds-b)" in w for w in status_writers), status_writers

            replicas["kxds-b"].process.kill()  # no clean release: the lease must expire
            killed = time.monotonic()
            assert await until(lambda: _is(holder(), "kxds-a"), what="kxds-a to take over")
            handover = time.monotonic() - killed
            assert handover < 6, f"leadership took {handover:.1f}s to move"

            await publish("second")
            writer = await until(lambda: ready_writer("second"), what="second to be Ready")
            assert "(kxds-a)" in writer, writer
        finally:
            if gateway is not None:
                await asyncio.to_thread(gateway.stop)
            for replica in replicas.values():
                await asyncio.to_thread(replica.stop)
            await asyncio.to_thread(backends.close)
            api.close()


async def _is(pending: Any, expected: str) -> bool:
    return bool(await pending == expected)
