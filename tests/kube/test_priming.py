"""Priming: a control plane (re)started against 2,000 existing Ingresses serves nothing until it has
all of them, so a gateway that already holds their configuration never sees any disappear."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
from kmock import Server, resource
from kmock._internal import enums
from kubernetes import client

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, Traffic, wait_until
from tests.kube.emulator import VersionedEmulator
from tests.kube.test_kubernetes_mode import GROUP, NS, PLURAL, VERSION, kubeconfig

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
COUNT = 2000


def all_ready(plane: ControlPlane) -> bool:
    entries = plane.ingresses()
    return len(entries) == COUNT and all(e["ready"] for e in entries.values())


async def test_restart_against_2000_ingresses_never_drops_a_route(tmp_path: Path) -> None:
    async with VersionedEmulator() as emulator, Server(emulator) as server:
        for declared in ("v1/services", "v1/secrets", "v1/configmaps", "discovery.k8s.io/v1/endpointslices",
                         "coordination.k8s.io/v1/leases", f"{GROUP}/{VERSION}/{PLURAL}"):
            emulator.resources[declared] = {"namespaced": True}
        url = str(server.url).rstrip("/")
        api = client.ApiClient(client.Configuration(host=url))
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        backends, ports = Backends(), ListenerPorts()
        port = await asyncio.to_thread(backends.start, "primed")

        await asyncio.to_thread(core.create_namespaced_service, NS, service("primed", NS, target=port))
        await asyncio.to_thread(discovery.create_namespaced_endpoint_slice, NS, endpoint_slice("primed", [LOCAL], port, NS))
        # Seeded straight into the emulator's store: through its HTTP API each request scans every
        # object, so 2,000 creates take minutes. kxds still lists and watches them over HTTP.
        ingresses = resource(GROUP, VERSION, PLURAL)
        for i in range(COUNT):
            doc = ingress(f"p{i}", rule([f"p{i}.example.com"], path(split("primed", namespace=NS, Which=str(i)))), namespace=NS)
            emulator.objects[ingresses, NS, f"p{i}"] = doc
        config = kubeconfig(tmp_path / "kubeconfig", url)
        args = ["--kubernetes", "--kubeconfig", str(config), "--no-leader-election"]
        first = second = gateway = None
        try:
            (tmp_path / "first").mkdir()
            first = await asyncio.to_thread(ControlPlane, tmp_path / "first", ports, args)
            gateway = await asyncio.to_thread(Gateway, tmp_path, first)
            await asyncio.to_thread(wait_until, lambda: all_ready(first), 120, 0.5, f"all {COUNT} Ingresses ready")

            hosts = [f"p{i}.example.com" for i in random.Random(7).sample(range(COUNT), 40)]
            with Traffic(ports.external, hosts, 3) as traffic:
                await asyncio.sleep(1)
                first.process.kill()  # no goodbye: Envoy keeps serving what it has
                await asyncio.sleep(1)
                (tmp_path / "second").mkdir()
                started = time.monotonic()
                second = await asyncio.to_thread(ControlPlane, tmp_path / "second", ports, args, first.xds_port)
                primed_in = time.monotonic() - started
                await asyncio.to_thread(wait_until, lambda: len(second.gateways()) == 1 and second.gateways()[0]["synced"], 60, 0.2,
                                        "the gateway to reconnect")
                await asyncio.sleep(1)
            assert traffic.sent > 100 and traffic.failures == [], (traffic.sent, traffic.failures[:5])
            events = [json.loads(line) for line in second.log_path.read_text().splitlines() if line.startswith("{")]
            names = [e["event"] for e in events]
            built = next(e for e in events if e["event"] == "snapshot.built")
            assert built["ingresses"] == COUNT and names.index("snapshot.built") < names.index("kxds.serving")
            # The reconnecting gateway already holds exactly this configuration: nothing to re-send.
            pushed = {e["type"] for e in events if e["event"] == "xds.push"}
            assert not pushed & {"CDS", "LDS"}, pushed
            # Each control plane listed the 2,000 Ingresses a page of 500 at a time, as client-go does.
            pages = [r.params.get("continue", "") for r in emulator.log
                     if r.action == enums.action.LIST and r.resource == ingresses and r.params.get("limit") == "500"]
            assert pages == ["", "500", "1000", "1500"] * 2, pages
            print(f"\nprimed {COUNT} Ingresses and served in {primed_in:.1f}s (process start included)")
        finally:
            for plane in (second, first):
                if plane is not None:
                    await asyncio.to_thread(plane.stop)
            if gateway is not None:
                await asyncio.to_thread(gateway.stop)
            await asyncio.to_thread(backends.close)
            api.close()
