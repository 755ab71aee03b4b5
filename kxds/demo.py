"""`kxds run`: the control plane, sample backends and a real Envoy together, for trying kxds out."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

import aiohttp

from kxds.app import running, wait_for_signal
from kxds.bootstrap import XdsClientPki, render_bootstrap
from kxds.echo import serve_echo
from kxds.envoy_process import start_envoy
from kxds.model.ingress import Ingress, Visibility
from kxds.settings import Settings


async def run_demo(settings: Settings, *, envoy_admin_port: int, echo_ports: list[int]) -> int:
    stop = asyncio.Event()
    backends = [asyncio.create_task(serve_echo("127.0.0.1", port, f"echo-{port}", stop)) for port in echo_ports]
    async with running(settings) as plane:
        workdir = Path(tempfile.mkdtemp(prefix="kxds-demo-"))
        # The gateway proves who it is with the certificate kxds provisioned (unless --insecure).
        tls = XdsClientPki(directory=str(plane.gateway_pki)) if plane.gateway_pki is not None else None
        bootstrap = render_bootstrap(f"127.0.0.1:{plane.xds_port}", envoy_admin_port, tls=tls)
        with open(workdir / "envoy.log", "wb") as envoy_log:
            envoy = start_envoy(bootstrap, workdir, log=envoy_log)
            try:
                await _wait_live(envoy, envoy_admin_port, workdir)
                print(_instructions(plane.controller.objects.values(), settings, plane.admin_port, workdir), flush=True)
                await wait_for_signal()
            finally:
                envoy.terminate()
                await asyncio.to_thread(envoy.wait)
    stop.set()
    await asyncio.gather(*backends, return_exceptions=True)
    return 0


async def _wait_live(envoy: subprocess.Popen[bytes], admin_port: int, workdir: Path, timeout: float = 60.0) -> None:
    """Envoy answers LIVE on /ready once it has its listeners and routes from kxds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if envoy.poll() is not None:
                raise RuntimeError(f"Envoy exited with {envoy.returncode}; see {workdir}/envoy.log")
            try:
                async with session.get(f"http://127.0.0.1:{admin_port}/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"Envoy did not become ready in {timeout}s; see {workdir}/envoy.log")


def _instructions(objects: object, settings: Settings, admin_port: int, workdir: Path) -> str:
    ports = settings.gateway.ports
    lines = ["", "kxds demo is running: control plane, sample backends and Envoy.", "Try:"]
    for obj in objects:  # type: ignore[attr-defined]
        if not isinstance(obj, Ingress):
            continue
        for rule in obj.rules:
            port = ports.external_http if rule.visibility is Visibility.EXTERNAL_IP else ports.internal_http
            for host in rule.hosts[:1]:
                lines.append(f"  curl -s -H 'Host: {host}' http://127.0.0.1:{port}/   # {rule.visibility} rule of {obj.key}")
    lines += [
        f"  curl -s http://127.0.0.1:{admin_port}/ingresses   # readiness of every Ingress",
        f"Edit the files under {settings.source_dir}/ and the change reaches Envoy live. Envoy's log: {workdir}/envoy.log",
        "Stop with Ctrl-C.",
    ]
    return "\n".join(lines)
