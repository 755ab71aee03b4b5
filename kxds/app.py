"""The composition root: builds the source, controller, xDS server and admin server, and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from kxds.admin import admin_app
from kxds.bootstrap import split_address
from kxds import __version__
from kxds.controller import Controller, IngressStatus
from kxds.metrics import Metrics
from kxds.model.objects import Filters, ObjectKey
from kxds.settings import KubernetesSettings, Settings
from kxds.sources.files import FileSource
from kxds.xds.fleet import Fleet
from kxds.xds.server import XdsServer
from kxds.xds.snapshot import Snapshot

log = structlog.get_logger("kxds")


@dataclass(slots=True)
class Running:
    controller: Controller
    fleet: Fleet
    xds_port: int
    admin_port: int
    # The watch and rebuild loops: they run until stopped, so one that ends has crashed.
    tasks: list[asyncio.Task[None]]


@contextlib.asynccontextmanager
async def running(settings: Settings, kube_api: Any = None) -> AsyncIterator[Running]:
    """The control plane, primed and serving, for as long as the context is open.

    `kube_api` (a kubernetes ApiClient) overrides the one built from the settings, for tests.
    """
    metrics = Metrics()
    fleet = Fleet(Snapshot(serial=0, resources={}), metrics)
    controller = Controller(fleet, settings.gateway, metrics, debounce_seconds=settings.debounce_seconds,
                            corrupt_cluster=settings.test_corrupt_cluster, kourier_algorithm=settings.kourier_algorithm)
    fleet.on_change.append(controller.observe_convergence)
    fleet.on_nack.append(controller.on_nack)
    filters = Filters(ingress_class=settings.ingress_class, system_namespace=settings.system_namespace)
    async with contextlib.AsyncExitStack() as stack:
        # Prime: every object is read and translated before any gateway can connect, so a restarted
        # control plane never serves an empty or partial configuration.
        if settings.kubernetes is not None:
            tasks = await stack.enter_async_context(_kubernetes_source(settings, settings.kubernetes, filters, controller, fleet, kube_api))
        else:
            tasks = _file_source(settings, filters, controller, metrics)
        await controller.rebuild()
        xds = XdsServer(fleet, settings.xds_address, settings.xds_tls)
        await xds.start()
        stack.push_async_callback(xds.stop)
        await xds.set_serving()
        admin_host, admin_port = split_address(settings.admin_address)
        runner = web.AppRunner(admin_app(controller, fleet, metrics, serving=lambda: True), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, admin_host, admin_port).start()
        bound_admin = runner.addresses[0][1] if runner.addresses else admin_port
        tasks.append(asyncio.create_task(controller.run()))
        stack.push_async_callback(_cancel, tasks)
        log.info("kxds.serving", xds_port=xds.port, admin_port=bound_admin, ingress_class=settings.ingress_class,
                 source="kubernetes" if settings.kubernetes is not None else str(settings.source_dir))
        yield Running(controller, fleet, xds.port, bound_admin, tasks)
    log.info("kxds.stopped")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _file_source(settings: Settings, filters: Filters, controller: Controller, metrics: Metrics) -> list[asyncio.Task[None]]:
    if settings.source_dir is None:
        raise ValueError("a source directory is required without --kubernetes")
    source = FileSource(settings.source_dir, filters, controller.apply, on_reject=lambda kind: metrics.rejected_objects.labels(kind).inc())
    source.load()
    return [asyncio.create_task(source.run())]


@contextlib.asynccontextmanager
async def _kubernetes_source(settings: Settings, kube: KubernetesSettings, filters: Filters, controller: Controller, fleet: Fleet,
                             api: Any) -> AsyncIterator[list[asyncio.Task[None]]]:
    from kxds.leader import LeaderElector, LeaseSettings
    from kxds.model.ingress import Ingress
    from kxds.prober import GATEWAY_SERVICE, Prober
    from kxds.sources.kubernetes import KubernetesOptions, KubernetesSource, api_client, ingress_status_patcher
    from kxds.status import LoadBalancers, StatusWriter

    identity = kube.identity or f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"
    api = api or api_client(kube.kubeconfig)
    api.user_agent = f"kxds/{__version__} ({identity})"
    prober = Prober(settings.gateway.ports)

    async def verify(status: IngressStatus) -> bool:
        """Every gateway pod serves the current hash: this replica's ACKs, else the Knative probe."""
        ingress = controller.objects.get(ObjectKey("Ingress", status.namespace, status.name))
        pods = controller.gateway_pods(kube.gateway_namespace, GATEWAY_SERVICE)
        if not isinstance(ingress, Ingress) or not pods:
            return status.ready  # no gateway pods known: this replica's own gateways decide
        return await prober.ready(ingress, pods, controller.acked_gateway_ips(ingress.key))

    writer = StatusWriter(controller.statuses, ingress_status_patcher(api),
                          LoadBalancers(gateway_namespace=kube.gateway_namespace, cluster_domain=kube.cluster_domain), verify)

    def on_raw(key: ObjectKey, raw: Mapping[str, Any] | None) -> None:
        if key.kind == "Ingress":
            writer.observe(f"{key.namespace}/{key.name}", raw)

    options = KubernetesOptions(namespace=kube.namespace, system_namespace=settings.system_namespace,
                                secrets_by_certificate_uid=kube.secrets_by_certificate_uid)
    source = KubernetesSource(api, filters, options, controller.apply, on_raw)
    loop = asyncio.get_running_loop()
    leadership = asyncio.Event()
    elector = None
    if kube.leader_election:
        lease = LeaseSettings(namespace=settings.system_namespace, identity=identity,
                              duration_seconds=kube.lease_duration_seconds, renew_every_seconds=kube.lease_renew_seconds)

        def wake(leader: bool) -> None:
            loop.call_soon_threadsafe(leadership.set)

        elector = LeaderElector(api, lease, on_change=wake)
        threading.Thread(target=elector.run, name="leader-election", daemon=True).start()
    source.start()
    try:
        await source.primed()
        leads = (lambda: elector.is_leader) if elector is not None else (lambda: True)
        yield [asyncio.create_task(_write_statuses(writer, prober, controller, fleet, leads, leadership))]
    finally:
        await source.stop()
        if elector is not None:
            await asyncio.to_thread(elector.stop)


async def _write_statuses(writer: Any, prober: Any, controller: Controller, fleet: Fleet, leads: Callable[[], bool],
                          leadership: asyncio.Event) -> None:
    """Re-check statuses (as leader) whenever a rebuild, an ACK or leadership may have changed them;
    at least every second while anything is still being probed."""
    while True:
        waits = [asyncio.ensure_future(controller.wait_rebuilt()), asyncio.ensure_future(fleet.wait_changed()),
                 asyncio.ensure_future(leadership.wait())]
        await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        leadership.clear()
        await asyncio.sleep(0.02)  # let a burst of ACKs land
        if leads():
            await writer.sync()
            prober.forget((f"{s.namespace}/{s.name}", s.hash) for s in controller.statuses())


async def wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (exit 0), or until a background loop crashes (exit 1), so that
    the orchestrator restarts kxds instead of it serving a configuration that no longer follows."""
    async with running(settings) as plane:
        signal_task = asyncio.create_task(wait_for_signal())
        done, _ = await asyncio.wait([signal_task, *plane.tasks], return_when=asyncio.FIRST_COMPLETED)
        signal_task.cancel()
        for task in done - {signal_task}:
            error = task.exception() if not task.cancelled() else None
            log.error("kxds.crashed", task=task.get_coro().__qualname__, error=repr(error), exc_info=error)  # type: ignore[union-attr]
            return 1
    return 0
