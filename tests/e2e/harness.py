"""Real parts for end-to-end tests: `kxds serve`, Envoy gateways, echo backends and curl.

Everything binds to 127.0.0.1 on free ports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from kxds.bootstrap import XdsClientPki, render_bootstrap
from kxds.echo import echo_app, serve_asgi
from kxds.envoy_process import start_envoy
from kxds.pki import bundle_leaf

LOCAL = "127.0.0.1"


def _ephemeral_ports() -> range:
    """The kernel's source ports for outgoing connections (net.ipv4.ip_local_port_range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


_EPHEMERAL = _ephemeral_ports()
# Above the registered ports most services use, outside the ephemeral range.
_LISTEN_PORTS = [p for p in range(20000, 65536) if p not in _EPHEMERAL]
_handed_out: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never handed out before in this process, outside the kernel's
    ephemeral range. A port handed out here is often bound much later (the HTTPS listeners only
    once a TLS Ingress exists): an ephemeral one could meanwhile become the source port of any
    outgoing connection (a curl, an Envoy upstream), and the listener then fails to bind."""
    for _ in range(1000):
        port = random.choice(_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((LOCAL, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port outside the ephemeral range")


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- backends -------------------------------------------------------------------------------


class Backends:
    """Echo servers (HTTP/1.1 + h2c) on an event loop in a background thread, counting requests."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: dict[str, tuple[asyncio.Event, Any]] = {}
        self.ports: dict[str, int] = {}
        self.hits: Counter[str] = Counter()

    def start(self, name: str, app: Callable[[str, int], Any] = echo_app, certfile: str = "", keyfile: str = "") -> int:
        """Serve `app(name, port)` on a free port (over TLS with a certificate); returns the port."""
        port = free_port()
        inner = app(name, port)

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                self.hits[name] += 1
            await inner(scope, receive, send)

        stop = asyncio.Event()
        task = asyncio.run_coroutine_threadsafe(serve_asgi(counting, LOCAL, port, stop, certfile=certfile, keyfile=keyfile), self._loop)
        self._servers[name] = (stop, task)
        self.ports[name] = port
        wait_until(lambda: connectable(port), what=f"backend {name} on port {port}")
        return port

    def stop(self, name: str) -> None:
        stop, task = self._servers.pop(name)
        self._loop.call_soon_threadsafe(stop.set)
        wait_until(lambda: task.done(), timeout=10, what=f"backend {name} to stop")

    def close(self) -> None:
        for name in list(self._servers):
            self.stop(name)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def rss_mib(pid: int) -> float:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def connectable(port: int) -> bool:
    try:
        socket.create_connection((LOCAL, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def terminate(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- control plane and gateways -------------------------------------------------------------


@dataclass(frozen=True)
class ListenerPorts:
    external: int = field(default_factory=free_port)
    internal: int = field(default_factory=free_port)
    probe: int = field(default_factory=free_port)
    external_tls: int = field(default_factory=free_port)
    internal_tls: int = field(default_factory=free_port)
    probe_tls: int = field(default_factory=free_port)


class ControlPlane:
    """`kxds serve` in a subprocess, fed by a source directory the test writes into."""

    def __init__(self, workdir: Path, ports: ListenerPorts, extra_args: Sequence[str] = (), xds_port: int | None = None,
                 env: Mapping[str, str] | None = None, log_name: str = "kxds.log") -> None:
        self.source = workdir / "source"
        self.source.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / log_name
        self.xds_port, self.admin_port = xds_port or free_port(), free_port()
        self.ports = ports
        # kxds's own CA by default (as a user gets it); the gateways mount DIR/gateway.
        own_pki = not any(a in ("--insecure", "--xds-tls-cert") for a in extra_args)
        self.gateway_pki: Path | None = workdir / "pki" / "gateway" if own_pki else None
        pki_args = ["--xds-pki-dir", str(workdir / "pki")] if own_pki else []
        args = [
            sys.executable, "-m", "kxds", "serve",
            "--source", str(self.source),
            "--xds-address", f"{LOCAL}:{self.xds_port}",
            "--admin-address", f"{LOCAL}:{self.admin_port}",
            "--listen-address", LOCAL,
            "--external-http-port", str(ports.external),
            "--internal-http-port", str(ports.internal),
            "--probe-http-port", str(ports.probe),
            "--external-https-port", str(ports.external_tls),
            "--internal-https-port", str(ports.internal_tls),
            "--probe-https-port", str(ports.probe_tls),
            "--log-level", "debug",
            *pki_args,
            *extra_args,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        wait_until(lambda: self.process.poll() is not None or self._admin_ok(), timeout=60, what="kxds to serve")
        if self.process.poll() is not None:
            raise RuntimeError(f"kxds exited:\n{self.log_path.read_text()}")
        kubeconfig = extra_args[list(extra_args).index("--kubeconfig") + 1] if "--kubeconfig" in extra_args else (env or {}).get("KUBECONFIG")
        if own_pki and "--kubernetes" in extra_args and kubeconfig:
            # Kubernetes mode keeps the gateways' bundle in a Secret: mount it, as kubelet would.
            self.gateway_pki = mount_gateway_secret(kubeconfig, workdir / "gateway-pki")

    def _admin_ok(self) -> bool:
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{LOCAL}:{self.admin_port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def ingresses(self) -> dict[str, dict[str, Any]]:
        return {f"{i['namespace']}/{i['name']}": i for i in json.loads(self.get("/ingresses")[1])}

    def gateways(self) -> list[dict[str, Any]]:
        gateways: list[dict[str, Any]] = json.loads(self.get("/gateways")[1])["gateways"]
        return gateways

    def snapshot_serial(self) -> int:
        return int(json.loads(self.get("/gateways")[1])["snapshot_serial"])

    def wait_synced(self, after: int, timeout: float = 20.0) -> None:
        """Wait for a snapshot newer than `after` that every connected gateway has applied."""
        def synced() -> bool:
            state = json.loads(self.get("/gateways")[1])
            return state["snapshot_serial"] > after and all(g["synced"] for g in state["gateways"])

        wait_until(synced, timeout=timeout, what=f"gateways to apply a snapshot newer than {after}")

    def write(self, filename: str, docs: Iterable[dict[str, Any]]) -> None:
        """Write atomically (temp file + rename), as a careful operator or kubectl would."""
        temp = self.source / f".{filename}.tmp"
        temp.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
        os.replace(temp, self.source / filename)

    def remove(self, filename: str) -> None:
        (self.source / filename).unlink(missing_ok=True)

    def wait_ready(self, key: str, digest: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            entry = self.ingresses().get(key)
            if entry and entry["ready"] and (digest is None or entry["hash"] == digest):
                return entry
            return None

        try:
            result: dict[str, Any] = wait_until(ready, timeout=timeout, what=f"Ingress {key} to be ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; now: {self.ingresses().get(key)}") from None
        return result

    def wait_status(self, key: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        try:
            result: dict[str, Any] = wait_until(
                lambda: (e := self.ingresses().get(key)) is not None and predicate(e) and e, timeout=timeout, what=f"status of {key}"
            )
        except TimeoutError as exc:
            # What it was instead, and what kxds said last: a timeout alone cannot be diagnosed.
            tail = self.log_path.read_text(errors="replace").splitlines()[-40:]
            raise TimeoutError(f"{exc}; now: {self.ingresses().get(key)}; kxds log tail:\n" + "\n".join(tail)) from None
        return result

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


def gateway_channel(plane: ControlPlane) -> grpc.Channel:
    """A gRPC channel to kxds authenticated as a gateway, with the bundle kxds provisioned."""
    assert plane.gateway_pki is not None
    cert, key = gateway_leaf(plane.gateway_pki)
    credentials = grpc.ssl_channel_credentials((plane.gateway_pki / "ca.crt").read_bytes(), private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"{LOCAL}:{plane.xds_port}", credentials)


def mount_gateway_secret(kubeconfig: str, directory: Path, ref: str = "kourier-system/kxds-gateway-xds") -> Path:
    """Write the gateways' bundle Secret's keys as files, as a Secret volume holds them."""
    from kubernetes import client, config

    api = config.new_client_from_config(kubeconfig)
    try:
        namespace, name = ref.split("/")
        secret = wait_until(lambda: _read_secret(client.CoreV1Api(api), namespace, name), what=f"Secret {ref}")
    finally:
        api.close()
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in secret.data.items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def _read_secret(core: Any, namespace: str, name: str) -> Any:
    from kubernetes import client

    try:
        return core.read_namespaced_secret(name, namespace)
    except client.ApiException:
        return None


def gateway_leaf(directory: Path) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of the gateway bundle in `directory`."""
    bundle = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    leaf = bundle_leaf(bundle)
    assert leaf is not None, f"no gateway certificate in {directory}"
    return leaf.cert, leaf.key


class Gateway:
    """A real Envoy bootstrapped by `kxds bootstrap` against the control plane."""

    def __init__(self, workdir: Path, plane: ControlPlane, name: str = "gw", bootstrap_options: Mapping[str, Any] | None = None,
                 live_timeout: float = 30) -> None:
        self.admin_port = free_port()
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "envoy.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        options = dict(bootstrap_options or {})
        if "tls" not in options and plane.gateway_pki is not None:
            options["tls"] = XdsClientPki(directory=str(plane.gateway_pki))
        bootstrap = render_bootstrap(f"{LOCAL}:{plane.xds_port}", self.admin_port, **options)
        self.process = start_envoy(bootstrap, self.workdir, log=self._log, log_level=os.environ.get("KXDS_TEST_ENVOY_LOG", "info"))
        wait_until(self.live, timeout=live_timeout, what=f"Envoy {name} to go LIVE")

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{LOCAL}:{self.admin_port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def live(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Envoy exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.admin("/ready").strip() == "LIVE"
        except OSError:
            return False

    def stat(self, name: str) -> int:
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        raise KeyError(name)

    def stats_matching(self, pattern: str) -> dict[str, int]:
        """Every counter or gauge whose name matches the regular expression."""
        out = {}
        for line in self.admin(f"/stats?filter={pattern}").splitlines():
            key, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[key] = int(value)
        return out

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


# -- curl -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def request_header(self, name: str) -> str | None:
        """First value of a header as the echo backend received it (Go canonical name)."""
        values = self.json()["request"]["headers"].get(name)
        return values[0] if values else None


def curl(port: int, host: str, path: str = "/", headers: Sequence[str] = (), options: Sequence[str] = (), scheme: str = "http") -> Reply:
    """One request through the gateway: URL host kept for Host/SNI, TCP sent to 127.0.0.1:port."""
    default_port = 443 if scheme == "https" else 80
    args = ["curl", "-sS", "-i", "--max-time", "10", "--connect-to", f"{host}:{default_port}:{LOCAL}:{port}", *options]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run([*args, f"{scheme}://{host}{path}"], capture_output=True, check=False, timeout=40)
    if out.returncode != 0:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.decode()}")
    return parse_reply(out.stdout)


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100") or head.startswith(b"HTTP/2 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, body)


MARK = b"\n@@kxds-status:"


def curl_many(port: int, host: str, count: int, path: str = "/", parallel: int = 8) -> list[tuple[int, bytes]]:
    """`count` requests, `parallel` at a time, each curl process reusing one keep-alive connection."""
    per_process = [count // parallel + (1 if i < count % parallel else 0) for i in range(parallel)]
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        if not n:
            return
        args = ["curl", "-sS", "--max-time", "30", "--connect-to", f"{host}:80:{LOCAL}:{port}", "-w", MARK.decode() + "%{http_code}\n"]
        out = subprocess.run([*args, *[f"http://{host}{path}"] * n], capture_output=True, check=False, timeout=120)
        # Output: body₁ MARK status₁ \n body₂ MARK status₂ \n …
        parts = out.stdout.split(MARK)
        replies, body = [], parts[0]
        for tail in parts[1:]:
            status, _, next_body = tail.partition(b"\n")
            replies.append((int(status), body))
            body = next_body
        with lock:
            results.extend(replies)

    threads = [threading.Thread(target=worker, args=(n,)) for n in per_process]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class Traffic:
    """curl through the gateway in a background thread, batch after batch, until the `with`
    block ends: how many requests went out and which did not answer 200."""

    def __init__(self, port: int, hosts: Sequence[str], per_host: int, *, parallel: int = 1, path: Callable[[], str] = lambda: "/") -> None:
        self.port, self.hosts, self.per_host, self.parallel, self.path = port, hosts, per_host, parallel, path
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            for host in self.hosts:
                for status, body in curl_many(self.port, host, self.per_host, path=self.path(), parallel=self.parallel):
                    self.sent += 1
                    if status != 200:
                        self.failures.append(f"{host}: {status} {body[:200]!r}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
