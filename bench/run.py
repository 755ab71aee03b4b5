"""The kxds benchmark: Knative-shaped Ingresses, a real `kxds serve` and a real Envoy.

    .venv/bin/python -m bench.run [--sizes 1000,5000,10000] [--changes 30]

For each N and mode (default: `kxds serve` and `kxds bootstrap` with no flags; sotw; kourier-layout;
kourier, the Kourier-algorithm baseline) it measures through a real Envoy, p50/p95/max over
`--changes` events each: a Knative Service created (Ingress, two revision Services and their
EndpointSlices) until it answers, a revision rolled out until its traffic reaches it, a Knative
Service deleted until 404, an Ingress edited in place until the new header shows, an endpoint flip
until traffic reaches the new endpoint; plus cold start (process start → primed and serving; the
translate + first snapshot part alone from kxds's own log), the time until Envoy has every Ingress,
kxds CPU per event, kxds RSS and Envoy's heap. Results go to bench/results/ as JSON, Markdown and
a PNG plot (bench/plot.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.generate import endpoint_slice, host, ingress, revision, revision_objects
from bench.plot import plot
from kxds.bootstrap import XdsClientPki, render_bootstrap
from kxds.envoy_process import start_envoy
# The e2e tests' real loopback parts: echo backends in a thread, free ports.
from tests.e2e.harness import LOCAL, Backends, connectable, free_port

RESULTS = Path(__file__).parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait(check: Any, timeout: float, interval: float = 0.01) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError("benchmark step timed out")
        time.sleep(interval)
    return time.monotonic() - started


def get(port: int, host_name: str, **headers: str) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(LOCAL, port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": host_name, **headers})
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else {}
    except (OSError, http.client.HTTPException, json.JSONDecodeError):
        return 0, {}
    finally:
        connection.close()


def admin_json(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection(LOCAL, port, timeout=30)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS), or the most it ever was (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def write(path: Path, docs: list[dict[str, Any]]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    os.replace(temp, path)


# What each mode runs: kxds serve's extra flags, and whether the gateway speaks delta xDS.
MODES: dict[str, tuple[list[str], bool]] = {
    "default": ([], True),  # `kxds serve` and `kxds bootstrap` with no flags: scoped routes, delta xDS
    "sotw": ([], False),  # the defaults with a Kourier-shaped state-of-the-world gateway
    "kourier-layout": (["--route-layout", "kourier"], True),  # Kourier's two route configurations
    "kourier": (["--route-layout", "kourier", "--kourier-algorithm"], False),  # the baseline: Kourier's algorithm
}


def revision_header(port: int, host_name: str) -> str:
    """The revision the `canary` tag (always the newest revision) reaches."""
    headers = get(port, host_name, **{"Knative-Serving-Tag": "canary"})[1].get("request", {}).get("headers", {})
    return str(headers.get("Knative-Serving-Revision", [""])[0])


def life_cycle(n: int, changes: int, source: Path, ports: dict[str, int], backend_ports: list[int], kxds_pid: int) -> dict[str, Any]:
    """Knative Services created (Ingress, two revision Services and their EndpointSlices) until
    they answer, rolled out (a third revision's Service and slice, then the Ingress moved to it)
    until its traffic reaches the new revision, and deleted until 404."""
    create, rollout, delete = [], [], []
    cpu_before = proc_cpu_seconds(kxds_pid)
    for k in range(changes):
        i = n + k
        t0 = time.monotonic()
        write(source / f"ksvc-{k}.yaml", [ingress(i), *revision_objects(i, backend_ports)])
        wait(lambda i=i: get(ports["external"], host(i))[0] == 200, 120, 0.002)
        create.append(time.monotonic() - t0)
    for k in range(changes):
        i = n + k
        t0 = time.monotonic()
        write(source / f"revision-{k}.yaml", revision_objects(i, backend_ports, revisions=(3,)))
        write(source / f"ksvc-{k}.yaml", [ingress(i, generation=2, latest=3), *revision_objects(i, backend_ports)])
        wait(lambda i=i: revision_header(ports["external"], host(i)) == revision(i, 3), 120, 0.002)
        rollout.append(time.monotonic() - t0)
    for k in range(changes):
        i = n + k
        t0 = time.monotonic()
        (source / f"ksvc-{k}.yaml").unlink()
        (source / f"revision-{k}.yaml").unlink()
        wait(lambda i=i: get(ports["external"], host(i))[0] == 404, 120, 0.002)
        delete.append(time.monotonic() - t0)
    cpu = proc_cpu_seconds(kxds_pid) - cpu_before
    return {"create": percentiles(create), "rollout": percentiles(rollout), "delete": percentiles(delete),
            "cpu_per_life_cycle_event_ms": round(cpu / (3 * changes) * 1000, 1)}


def run_size(n: int, changes: int, workdir: Path, backend_ports: list[int], trim_stats: bool = False, mode: str = "default") -> dict[str, Any]:
    workdir = workdir / mode
    workdir.mkdir(exist_ok=True)
    source = workdir / f"source-{n}"
    source.mkdir()
    # Ingress 0 and its first revision's EndpointSlice change during the run: their own files.
    static = [d for i in range(1, n) for d in (ingress(i), *revision_objects(i, backend_ports))]
    static += [d for d in revision_objects(0, backend_ports) if not (d["kind"] == "EndpointSlice" and d["metadata"]["name"].startswith("svc0-00001"))]
    write(source / "objects.yaml", static)
    write(source / "change.yaml", [ingress(0)])
    write(source / "flip.yaml", [endpoint_slice("svc0-00001", backend_ports[0])])
    ports = {name: free_port() for name in ("xds", "admin", "external", "internal", "probe", "envoy_admin")}
    log_path = workdir / f"kxds-{n}.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        kxds = subprocess.Popen(
            [sys.executable, "-m", "kxds", "serve", "--source", str(source), "--xds-address", f"{LOCAL}:{ports['xds']}",
             "--admin-address", f"{LOCAL}:{ports['admin']}", "--listen-address", LOCAL, "--external-http-port", str(ports["external"]),
             "--internal-http-port", str(ports["internal"]), "--probe-http-port", str(ports["probe"]), "--log-level", "info",
             "--xds-pki-dir", str(workdir / "pki"),  # the default: mutual TLS with kxds's own CA
             *MODES[mode][0]],
            stdout=log, stderr=subprocess.STDOUT,
        )
    envoy = None
    try:
        cold = wait(lambda: connectable(ports["admin"]), 600, 0.05)
        kxds_cpu_primed = proc_cpu_seconds(kxds.pid)
        rss = {"primed": round(proc_rss_mib(kxds.pid), 1)}
        envoy_log = open(workdir / f"envoy-{n}.log", "wb")  # noqa: SIM115 - closed with the process below
        bootstrap = render_bootstrap(f"{LOCAL}:{ports['xds']}", ports["envoy_admin"], trim_stats=trim_stats, delta=MODES[mode][1],
                                     tls=XdsClientPki(directory=str(workdir / "pki" / "gateway")))
        envoy = start_envoy(bootstrap, workdir / f"envoy-{n}", log=envoy_log)

        def all_ready() -> bool:
            try:
                entries = admin_json(ports["admin"], "/ingresses")
            except (OSError, json.JSONDecodeError):
                return False
            return len(entries) == n and all(e["ready"] for e in entries)

        routed = wait(all_ready, 900, 0.25)
        # Who worked while Envoy caught up: kxds serving it, or Envoy applying what it was sent.
        sync_cpu = {"kxds_s": round(proc_cpu_seconds(kxds.pid) - kxds_cpu_primed, 2), "envoy_s": round(proc_cpu_seconds(envoy.pid), 2)}
        rss["synced"] = round(proc_rss_mib(kxds.pid), 1)
        sample = random.Random(n).sample(range(n), min(n, 50))
        assert all(get(ports["external"], host(i))[0] == 200 for i in sample), "a sampled Ingress is not routed"
        cpu_before = proc_cpu_seconds(kxds.pid)

        change_latencies = []
        for k in range(changes):
            marker = f"change-{k}"
            t0 = time.monotonic()
            write(source / "change.yaml", [ingress(0, generation=k + 2, marker=marker)])
            wait(lambda m=marker: get(ports["external"], host(0))[1].get("request", {}).get("headers", {}).get("Bench-Marker") == [m], 60, 0.002)
            change_latencies.append(time.monotonic() - t0)
        cpu_changes = proc_cpu_seconds(kxds.pid) - cpu_before

        flip_latencies = []
        for k in range(changes):
            target = backend_ports[(k + 1) % len(backend_ports)]
            t0 = time.monotonic()
            write(source / "flip.yaml", [endpoint_slice("svc0-00001", target)])
            # svc0-00001 takes 90%: poll until a response comes from the new endpoint.
            wait(lambda t=target: get(ports["external"], host(0))[1].get("server", {}).get("port") == t, 60, 0.002)
            flip_latencies.append(time.monotonic() - t0)
        events = life_cycle(n, changes, source, ports, backend_ports, kxds.pid)
        memory = admin_json(ports["envoy_admin"], "/memory")
        built = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{") and '"snapshot.built"' in line]
        return {
            "mode": mode,
            "ingresses": n,
            "envoy_trimmed_stats": trim_stats,
            "objects": n * 5,
            "cold_start_s": round(cold, 2),
            "first_translate_s": built[0]["seconds"] if built else None,
            "envoy_routes_all_s": round(routed, 2),
            "envoy_routes_all_from_start_s": round(cold + routed, 2),
            "cold_sync_cpu": sync_cpu,
            "ingress_change": percentiles(change_latencies),
            "endpoint_flip": percentiles(flip_latencies),
            "cpu_per_change_ms": round(cpu_changes / changes * 1000, 1),
            **events,
            "kxds_rss_mib": round(proc_rss_mib(kxds.pid), 1),
            # Where it grew: once primed (before any gateway), once Envoy had everything, and the peak.
            "kxds_rss_phases_mib": {**rss, "peak": round(proc_rss_mib(kxds.pid, "VmHWM"), 1)},
            "envoy_heap_mib": round(int(memory["heap_size"]) / 2**20, 1),
            "envoy_allocated_mib": round(int(memory["allocated"]) / 2**20, 1),
        }
    finally:
        kxds.terminate()
        kxds.wait(timeout=30)
        if os.environ.get("BENCH_KEEP_LOGS"):
            Path(os.environ["BENCH_KEEP_LOGS"]).mkdir(parents=True, exist_ok=True)
            os.replace(log_path, Path(os.environ["BENCH_KEEP_LOGS"]) / log_path.name)
        if envoy is not None:
            envoy.terminate()
            envoy.wait(timeout=30)


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"Command: `{command}` on {platform.machine()}, {os.cpu_count()} cores"
        f"{'; Envoy with --trim-stats' if results and results[0].get('envoy_trimmed_stats') else ''}.",
        "",
        "Each event p50 / p95 / max in ms, until a request through Envoy shows it. Modes: default = `kxds serve` and `kxds bootstrap` "
        "with no flags (scoped routes, delta xDS); sotw = the defaults with a state-of-the-world gateway; kourier-layout = "
        "`--route-layout kourier`; kourier = the Kourier-algorithm baseline.",
        "",
        "| Ingresses | mode | create a ksvc | roll out a revision | delete a ksvc | edit in place | endpoint flip | CPU per life-cycle event "
        "| cold start → serving | first translate | Envoy has all | kxds RSS | Envoy heap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(p: dict[str, float]) -> str:
        return f"{p['p50_ms']:g} / {p['p95_ms']:g} / {p['max_ms']:g}"

    for r in results:
        lines.append(
            f"| {r['ingresses']:,} | {r['mode']} | {cell(r['create'])} | {cell(r['rollout'])} | {cell(r['delete'])} | {cell(r['ingress_change'])} "
            f"| {cell(r['endpoint_flip'])} | {r['cpu_per_life_cycle_event_ms']} ms | {r['cold_start_s']} s | {r['first_translate_s']} s "
            f"| {r['envoy_routes_all_s']} s after Envoy start | {r['kxds_rss_mib']} MiB | {r['envoy_heap_mib']} MiB |"
        )
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_size.setdefault(r["ingresses"], {})[r["mode"]] = r
    ratios = [
        f"{n:,}: create {m['default']['create']['p95_ms'] / m['kourier']['create']['p95_ms']:.3f}, "
        f"rollout {m['default']['rollout']['p95_ms'] / m['kourier']['rollout']['p95_ms']:.3f}, "
        f"delete {m['default']['delete']['p95_ms'] / m['kourier']['delete']['p95_ms']:.3f}"
        for n, m in by_size.items() if "default" in m and "kourier" in m
    ]
    if ratios:
        lines += ["", "Defaults p95 ÷ Kourier-algorithm p95 (same run): " + "; ".join(ratios) + "."]
    return "\n".join(lines) + "\n"


def save(directory: Path, command: str, results: list[dict[str, Any]], table: str, prefix: str = "") -> str:
    """`<prefix><stamp>.json` and `<prefix>latest.md` in `directory`; returns the stamp."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (directory / f"{prefix}{stamp}.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    (directory / f"{prefix}latest.md").write_text(table)
    return stamp


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--trim-stats", action="store_true", help="bootstrap Envoy with kxds bootstrap --trim-stats")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="variants measured side by side: default (no flags), sotw (a state-of-the-world gateway), kourier-layout "
                             "(--route-layout kourier), kourier (the baseline: Kourier's full rebuild and push, inline endpoints)")
    args = parser.parse_args()
    command = "python -m bench.run " + " ".join(sys.argv[1:])
    backends = Backends()
    backend_ports = [backends.start(f"backend-{n}") for n in range(args.backends)]
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="kxds-bench-") as workdir:
            for n in (int(s) for s in args.sizes.split(",")):
                for mode in args.modes.split(","):
                    result = run_size(n, args.changes, Path(workdir), backend_ports, args.trim_stats, mode)
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        backends.close()
    table = markdown(results, command)
    stamp = save(args.results, command, results, table)
    plot(results, args.results / f"{stamp}.png", command)
    shutil.copyfile(args.results / f"{stamp}.png", args.results / "latest.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
