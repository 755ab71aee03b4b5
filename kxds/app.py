"""The composition root: builds the source, controller, xDS server and admin server, and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from kxds.admin import admin_app
from kxds.bootstrap import split_address
from kxds.controller import Controller
from kxds.metrics import Metrics
from kxds.model.objects import Filters
from kxds.settings import Settings
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
async def running(settings: Settings) -> AsyncIterator[Running]:
    """The control plane, primed and serving, for as long as the context is open."""
    metrics = Metrics()
    fleet = Fleet(Snapshot(serial=0, resources={}), metrics)
    controller = Controller(fleet, settings.gateway, metrics, debounce_seconds=settings.debounce_seconds)
    source = FileSource(
        settings.source_dir,
        Filters(ingress_class=settings.ingress_class, system_namespace=settings.system_namespace),
        controller.apply,
        on_reject=lambda kind: metrics.rejected_objects.labels(kind).inc(),
    )
    # Prime: read and translate everything before any gateway can connect, so a restarted
    # control plane never serves an empty or partial configuration.
    source.load()
    await controller.rebuild()
    xds = XdsServer(fleet, settings.xds_address)
    await xds.start()
    await xds.set_serving()
    admin_host, admin_port = split_address(settings.admin_address)
    runner = web.AppRunner(admin_app(controller, fleet, metrics, serving=lambda: True), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, admin_host, admin_port)
    await site.start()
    bound_admin = runner.addresses[0][1] if runner.addresses else admin_port
    stop = asyncio.Event()
    tasks = [asyncio.create_task(controller.run()), asyncio.create_task(source.run(stop))]
    log.info("kxds.serving", xds_port=xds.port, admin_port=bound_admin, source=str(settings.source_dir), ingress_class=settings.ingress_class)
    try:
        yield Running(controller, fleet, xds.port, bound_admin, tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await xds.stop()
        await runner.cleanup()
        log.info("kxds.stopped")


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
