"""The life-cycle benchmark through the Kubernetes source: kmock's emulator as the API server (the
one the tests use), driven through the official `kubernetes` client; `kxds serve --kubernetes` with
its defaults; a real Envoy.

    .venv/bin/python -m bench.kube [--sizes 100,1000] [--events 30]

For each N: N Knative Services loaded, then `--events` times each: create a Knative Service (two
revision Services, their EndpointSlices, then the Ingress, as Serving does) until it answers through
Envoy and until its status says Ready (what `kn service create` waits for, seen by a watch); roll
out a revision (its Service and EndpointSlice, then the Ingress's split and tag moved to it) until
its traffic reaches it and until the new generation's status says Ready; edit an Ingress in place
(a header) until the header shows; flip an EndpointSlice until traffic reaches the new endpoint;
delete a Knative Service until 404. The emulator's own latency per API call is measured beside,
since it is not kxds's: a create is five calls and a rollout three, made one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kmock import Server
from kubernetes import client, watch

from bench.generate import endpoint_slice, host, ingress, revision, revision_objects
from bench.run import RESULTS, get, percentiles, proc_cpu_seconds, proc_rss_mib, revision_header, save, wait
from tests.e2e.harness import Backends, ControlPlane, Gateway, ListenerPorts
from tests.kube.emulator import VersionedEmulator
from tests.kube.test_kubernetes_mode import GROUP, PLURAL, VERSION, kubeconfig

NS = "bench"
KINDS = ("v1/services", "v1/secrets", "v1/configmaps", "v1/events", "discovery.k8s.io/v1/endpointslices",
         "coordination.k8s.io/v1/leases", f"{GROUP}/{VERSION}/{PLURAL}")


@contextmanager
def emulated_cluster() -> Iterator[str]:
    """The emulator on an event loop of its own thread; yields its URL. `asyncio.run` cancels the
    watch streams still open when it stops (left pending, each was reported destroyed at exit)."""
    started, stop = threading.Event(), asyncio.Event()
    url: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        async with VersionedEmulator() as emulator, Server(emulator) as server:
            for kind in KINDS:
                emulator.resources[kind] = {"namespaced": True}
            url.append(str(server.url).rstrip("/"))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    started.wait(30)
    try:
        yield url[0]
    finally:
        loops[0].call_soon_threadsafe(stop.set)
        thread.join(30)


class Api:
    def __init__(self, url: str) -> None:
        self.client = client.ApiClient(client.Configuration(host=url))
        self.core, self.discovery = client.CoreV1Api(self.client), client.DiscoveryV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)
        self.calls: list[float] = []

    def timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.monotonic()
        result = fn(*args)
        self.calls.append(time.monotonic() - t0)
        return result

    def create(self, doc: dict[str, Any]) -> None:
        match doc["kind"]:
            case "Service":
                self.timed(self.core.create_namespaced_service, NS, doc)
            case "EndpointSlice":
                self.timed(self.discovery.create_namespaced_endpoint_slice, NS, doc)
            case "Ingress":
                self.timed(self.custom.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, doc)

    def create_ksvc(self, i: int, backend_ports: list[int]) -> None:
        for doc in revision_objects(i, backend_ports):
            self.create(doc)
        self.create(ingress(i))

    def roll_out(self, i: int, backend_ports: list[int]) -> None:
        """Revision 3: its Service and EndpointSlice, then the Ingress moved to it (a new generation)."""
        for doc in revision_objects(i, backend_ports, revisions=(3,)):
            self.create(doc)
        self.patch_ingress(i, {"metadata": {"generation": 2}, "spec": ingress(i, generation=2, latest=3)["spec"]})

    def patch_ingress(self, i: int, body: dict[str, Any]) -> None:
        self.timed(self.custom.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, f"svc{i}", body)

    def delete_ksvc(self, i: int) -> None:
        self.timed(self.custom.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, f"svc{i}")


def ready_watch(api: Api, ready_at: dict[tuple[str, int], float], stop: threading.Event) -> None:
    """When each Ingress's status first says Ready for a generation, as a client sees it: list,
    then watch from the list's resourceVersion, and again whenever the watch ends."""

    def seen(obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            ready_at.setdefault((obj["metadata"]["name"], int(status.get("observedGeneration") or 0)), time.monotonic())

    while not stop.is_set():
        listed = api.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
        for obj in listed["items"]:
            seen(obj)
        events = watch.Watch().stream(api.custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                                      resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5)
        for event in events:
            seen(event["object"])
            if stop.is_set():
                return


def settle(pid: int, quiet_ms_per_s: float = 50.0, timeout: float = 120.0) -> float:
    """Seconds until the process uses less than `quiet_ms_per_s` of CPU over a second."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = proc_cpu_seconds(pid)
        time.sleep(1.0)
        if (proc_cpu_seconds(pid) - before) * 1000 < quiet_ms_per_s:
            break
    return time.monotonic() - started


def run_size(n: int, events: int, workdir: Path, backends: Backends, backend_ports: list[int]) -> dict[str, Any]:
    with emulated_cluster() as url:
        api = Api(url)
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:  # the load itself is not what is measured
            list(pool.map(lambda i: api.create_ksvc(i, backend_ports), range(n)))
        load_s = time.monotonic() - t0
        config = kubeconfig(workdir / "kubeconfig", url)
        ports = ListenerPorts()
        started = time.monotonic()
        plane = ControlPlane(workdir, ports, ["--kubernetes", "--context", "kmock", "--log-level", "info"], env={"KUBECONFIG": str(config)})
        cold_s = time.monotonic() - started
        try:
            gateway = Gateway(workdir, plane, live_timeout=900)  # the first configuration of N Services
        except BaseException:
            plane.stop()
            raise
        ready_at: dict[tuple[str, int], float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=ready_watch, args=(api, ready_at, stop), daemon=True)
        watcher.start()
        try:
            all_ready_s = wait(lambda: len(ready_at) >= n, 1800, 0.1)
            # The cold start's last status pass may still be checking Ingresses whose status it
            # need not write: the events below measure events, so they start once kxds is quiet.
            settled_s = settle(plane.process.pid)
            api.calls.clear()
            cpu_before = proc_cpu_seconds(plane.process.pid)
            routable, ready, rolled, rolled_ready, edited, flipped, gone = [], [], [], [], [], [], []
            for k in range(events):
                i = n + k
                t0 = time.monotonic()
                api.create_ksvc(i, backend_ports)
                wait(lambda i=i: get(ports.external, host(i))[0] == 200, 120, 0.002)
                routable.append(time.monotonic() - t0)
                wait(lambda i=i: (f"svc{i}", 1) in ready_at, 120, 0.002)
                ready.append(ready_at[(f"svc{i}", 1)] - t0)
            for k in range(events):
                i = n + k
                t0 = time.monotonic()
                api.roll_out(i, backend_ports)
                wait(lambda i=i: revision_header(ports.external, host(i)) == revision(i, 3), 120, 0.002)
                rolled.append(time.monotonic() - t0)
                wait(lambda i=i: (f"svc{i}", 2) in ready_at, 120, 0.002)
                rolled_ready.append(ready_at[(f"svc{i}", 2)] - t0)
            for k in range(events):
                marker = f"edit-{k}"
                t0 = time.monotonic()
                api.patch_ingress(0, {"metadata": {"generation": k + 2}, "spec": ingress(0, generation=k + 2, marker=marker)["spec"]})
                wait(lambda m=marker: get(ports.external, host(0))[1].get("request", {}).get("headers", {}).get("Bench-Marker") == [m], 120, 0.002)
                edited.append(time.monotonic() - t0)
            for k in range(events):
                target = backend_ports[(k + 1) % len(backend_ports)]
                t0 = time.monotonic()
                slice_name = endpoint_slice(revision(0, 1), target)["metadata"]["name"]
                api.timed(api.discovery.patch_namespaced_endpoint_slice, slice_name, NS, {"ports": endpoint_slice(revision(0, 1), target)["ports"]})
                # Revision 1 takes 90 %: poll until a response comes from the new endpoint.
                wait(lambda t=target: get(ports.external, host(0))[1].get("server", {}).get("port") == t, 120, 0.002)
                flipped.append(time.monotonic() - t0)
            for k in range(events):
                i = n + k
                t0 = time.monotonic()
                api.delete_ksvc(i)
                wait(lambda i=i: get(ports.external, host(i))[0] == 404, 120, 0.002)
                gone.append(time.monotonic() - t0)
            cpu = proc_cpu_seconds(plane.process.pid) - cpu_before
            per_call = api.calls[:]
            return {
                "source": "kubernetes (kmock emulator)",
                "ingresses": n,
                "emulator_load_s": round(load_s, 1),
                "cold_start_s": round(cold_s, 2),
                "all_statuses_ready_s": round(all_ready_s, 2),
                "quiet_after_ready_s": round(settled_s, 2),
                "create_routable": percentiles(routable),
                "create_status_ready": percentiles(ready),
                "rollout": percentiles(rolled),
                "rollout_status_ready": percentiles(rolled_ready),
                "ingress_change": percentiles(edited),
                "endpoint_flip": percentiles(flipped),
                "delete": percentiles(gone),
                "emulator_call_ms": {"p50": round(statistics.median(per_call) * 1000, 1), "max": round(max(per_call) * 1000, 1),
                                     "calls_per_create": 5, "calls_per_rollout": 3},
                "cpu_per_event_ms": round(cpu / (5 * events) * 1000, 1),
                "kxds_rss_mib": round(proc_rss_mib(plane.process.pid), 1),
            }
        finally:
            stop.set()
            gateway.stop()
            plane.stop()
            api.client.close()


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"Command: `{command}`. Kubernetes source: kmock's emulator through the official client; kxds and `kxds bootstrap` defaults.",
        "Each figure p50 / p95 / max in ms from the first API call of the event (a create is five calls, a rollout three, one after the other).",
        "",
        "| Ingresses | create → routable | create → status Ready | rollout → traffic | rollout → status Ready | edit | endpoint flip "
        "| delete → 404 | emulator per call p50 / max | all statuses Ready after start | CPU per event | kxds RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cell = lambda p: f"{p['p50_ms']:g} / {p['p95_ms']:g} / {p['max_ms']:g}"  # noqa: E731
        e = r["emulator_call_ms"]
        lines.append(f"| {r['ingresses']:,} | {cell(r['create_routable'])} | {cell(r['create_status_ready'])} | {cell(r['rollout'])} "
                     f"| {cell(r['rollout_status_ready'])} | {cell(r['ingress_change'])} | {cell(r['endpoint_flip'])} | {cell(r['delete'])} "
                     f"| {e['p50']} / {e['max']} ms | {r['all_statuses_ready_s']} s | {r['cpu_per_event_ms']} ms | {r['kxds_rss_mib']} MiB |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kube", description=__doc__)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python -m bench.kube " + " ".join(sys.argv[1:])
    backends = Backends()
    backend_ports = [backends.start(f"backend-{n}") for n in range(3)]
    results = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="kxds-bench-kube-") as workdir:
                result = run_size(n, args.events, Path(workdir), backends, backend_ports)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        backends.close()
    table = markdown(results, command)
    save(args.results, command, results, table, prefix="kube-")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
