"""The composition root: builds the source, controller, xDS server and admin server, and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kxds.admin import AdminServer, AdminState
from kxds.bootstrap import split_address
from kxds import __version__
from kxds.controller import Controller
from kxds.readiness import IngressStatus
from kxds.memory import RELEASE_AFTER_BYTES, Releaser, release_free_memory
from kxds.metrics import Metrics
from kxds.model.objects import Filters, ObjectKey
from kxds.pki import GATEWAY_IDENTITY
from kxds.pki_store import DirectoryStore, Provisioner, SecretStore
from kxds.settings import CA_SECRET_NAME, KubernetesSettings, Settings
from kxds.sources.files import FileSource
from kxds.xds.credentials import provisioned_credentials, server_credentials
from kxds.xds.fleet import Fleet
from kxds.xds.server import PeerPolicy, XdsServer
from kxds.xds.snapshot import Snapshot

# The Service kxds's gateways dial in a cluster (Kourier's name).
CONTROLLER_SERVICE = "net-kourier-controller"

log = structlog.get_logger("kxds")


@dataclass(slots=True)
class Running:
    controller: Controller
    fleet: Fleet
    xds_port: int
    admin_port: int
    # The watch and rebuild loops: they run until stopped, so one that ends has crashed.
    tasks: list[asyncio.Task[None]]
    # File mode with kxds's own CA: the gateways' bundle directory (`kxds bootstrap --xds-pki`).
    gateway_pki: Path | None = None


@contextlib.asynccontextmanager
async def running(settings: Settings, kube_api: Any = None) -> AsyncIterator[Running]:
    """The control plane, primed and serving, for as long as the context is open.

    `kube_api` (a kubernetes ApiClient) overrides the one built from the settings, for tests.
    """
    metrics = Metrics()
    fleet = Fleet(Snapshot(serial=0, resources={}), metrics)
    controller = Controller(fleet, settings.gateway, metrics, debounce_seconds=settings.debounce_seconds,
                            corrupt_cluster=settings.test_corrupt_cluster, corrupt_host=settings.test_corrupt_host_prefix, kourier_algorithm=settings.kourier_algorithm,
                            translate_processes=settings.translate_processes)
    fleet.on_change.append(controller.observe_convergence)
    fleet.on_nack.append(controller.on_nack)
    filters = Filters(ingress_class=settings.ingress_class, system_namespace=settings.system_namespace)
    async with contextlib.AsyncExitStack() as stack:
        api = None
        if settings.kubernetes is not None:
            from kxds.sources.kubernetes import api_client

            api = kube_api or api_client(settings.kubernetes.kubeconfig, settings.kubernetes.context)
        credentials, policy, provisioner = await asyncio.to_thread(_xds_security, settings, api)
        # Prime: every object is read and translated before any gateway can connect, so a restarted
        # control plane never serves an empty or partial configuration.
        leads: Callable[[], bool] = lambda: True  # noqa: E731 - file mode: this process is the only writer
        if settings.kubernetes is not None:
            tasks, leads = await stack.enter_async_context(_kubernetes_source(settings, settings.kubernetes, filters, controller, fleet, api))
        else:
            tasks = _file_source(settings, filters, controller, metrics)
        if provisioner is not None:
            tasks.append(asyncio.create_task(_renew_gateway_bundle(provisioner, leads, settings.pki.leaf_lifetime_seconds)))
        await controller.rebuild()
        xds = XdsServer(fleet, settings.xds_address, credentials, policy)
        await xds.start()
        stack.push_async_callback(xds.stop)
        await xds.set_serving()
        admin = AdminServer(AdminState(controller, fleet, metrics, serving=lambda: True), metrics, split_address(settings.admin_address),
                            asyncio.get_running_loop())
        admin.start()
        stack.callback(admin.stop)
        bound_admin = admin.port
        tasks.append(asyncio.create_task(controller.run()))
        churn = lambda: fleet.sent_bytes + controller.translations * RELEASE_AFTER_BYTES  # noqa: E731
        settled = lambda: not fleet.gateways or fleet.synced(fleet.snapshot.serial)  # noqa: E731
        tasks.append(asyncio.create_task(_release_memory(Releaser(churn, settled))))
        stack.push_async_callback(_cancel, tasks)
        log.info("kxds.serving", xds_port=xds.port, admin_port=bound_admin, ingress_class=settings.ingress_class,
                 source="kubernetes" if settings.kubernetes is not None else str(settings.source_dir))
        gateway_pki = provisioner.store.gateway_dir if provisioner is not None and isinstance(provisioner.store, DirectoryStore) else None
        yield Running(controller, fleet, xds.port, bound_admin, tasks, gateway_pki)
    log.info("kxds.stopped")


def _xds_security(settings: Settings, api: Any) -> tuple[Any, PeerPolicy, Provisioner | None]:
    """Credentials and peer policy of the xDS port (see Settings: own CA, operator files, or --insecure)."""
    unauthenticated = settings.insecure if settings.xds_tls is None else settings.xds_tls.ca is None
    if unauthenticated:
        log.warning("xds.insecure", transport="plaintext" if settings.xds_tls is None else "server-only TLS",
                    risk="--insecure: any client that reaches the xDS port is served configuration and private keys, and its "
                         "NACKs can hold Ingresses out")
    if settings.xds_tls is not None:
        return server_credentials(settings.xds_tls), PeerPolicy(None if unauthenticated else ""), None
    if settings.insecure:
        return None, PeerPolicy(None), None
    if settings.kubernetes is not None:
        ca_ref = settings.pki.ca_secret or f"{settings.system_namespace}/{CA_SECRET_NAME}"
        store: Any = SecretStore(api, ca_ref, settings.pki.gateway_secret)
    else:
        if settings.pki.directory is None:
            raise ValueError("a PKI directory is required for the provisioned xDS CA in file mode")
        store = DirectoryStore(settings.pki.directory)
    names = _server_names(settings)
    provisioner = Provisioner(store, names, datetime.timedelta(seconds=settings.pki.leaf_lifetime_seconds))
    provisioner.ensure_gateway_bundle()
    log.info("xds.mtls", server_names=list(names), gateway_bundle=settings.pki.gateway_secret if settings.kubernetes else str(store.gateway_dir))
    return provisioned_credentials(provisioner), PeerPolicy(GATEWAY_IDENTITY), provisioner


def _server_names(settings: Settings) -> tuple[str, ...]:
    """Every name a gateway may dial kxds by: the configured ones, the xDS address's host, and in a
    cluster the controller Service's short and long names."""
    names = list(settings.pki.server_names)
    host = split_address(settings.xds_address)[0]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    if settings.kubernetes is not None:
        service = f"{CONTROLLER_SERVICE}.{settings.system_namespace}"
        names += [CONTROLLER_SERVICE, service, f"{service}.svc", f"{service}.svc.{settings.kubernetes.cluster_domain}"]
    return tuple(dict.fromkeys(names))


async def _renew_gateway_bundle(provisioner: Provisioner, leads: Callable[[], bool], lifetime_seconds: float) -> None:
    """Re-issue the gateways' certificate before it expires (the leader only, in a cluster)."""
    while True:
        await asyncio.sleep(min(max(lifetime_seconds / 30, 0.5), 600.0))
        if leads():
            try:
                await asyncio.to_thread(provisioner.ensure_gateway_bundle)
            except Exception:  # the API may be briefly unreachable: the next round tries again
                log.exception("pki.renewal_failed")


async def _release_memory(releaser: Releaser, interval: float = 2.0) -> None:
    """Hand freed heap back to the operating system after bursts (memory.py); the call walks the
    heap, so it runs off the event loop."""
    while True:
        await asyncio.sleep(interval)
        if releaser.take():
            started = time.perf_counter()
            await asyncio.to_thread(release_free_memory)
            log.info("memory.released", seconds=round(time.perf_counter() - started, 4))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _file_source(settings: Settings, filters: Filters, controller: Controller, metrics: Metrics) -> list[asyncio.Task[None]]:
    if settings.source_dir is None:
        raise ValueError("a source directory is required without --kubernetes")
    source = FileSource(settings.source_dir, filters, controller.apply, on_reject=metrics.rejected)
    source.load()
    return [asyncio.create_task(source.run())]


@contextlib.asynccontextmanager
async def _kubernetes_source(settings: Settings, kube: KubernetesSettings, filters: Filters, controller: Controller, fleet: Fleet,
                             api: Any) -> AsyncIterator[tuple[list[asyncio.Task[None]], Callable[[], bool]]]:
    from kxds.leader import LeaderElector, LeaseSettings
    from kxds.model.ingress import Ingress
    from kxds.prober import GATEWAY_SERVICE, Prober
    from kxds.sources.kubernetes import KubernetesOptions, KubernetesSource, event_recorder, ingress_status_patcher
    from kxds.status import LoadBalancers, RateLimiter, StatusWriter

    identity = kube.identity or f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"
    api.user_agent = f"kxds/{__version__} ({identity})"
    prober = Prober(settings.gateway.ports)

    async def verify(status: IngressStatus) -> bool:
        """Every gateway pod serves the current hash: this replica's ACKs, else the Knative probe."""
        ingress = controller.objects.get(ObjectKey("Ingress", status.namespace, status.name))
        pods = controller.gateway_pods(kube.gateway_namespace, GATEWAY_SERVICE)
        if not isinstance(ingress, Ingress) or not pods:
            return status.ready  # no gateway pods known: this replica's own gateways decide
        return await prober.ready(ingress, pods, controller.acked_gateway_ips(ingress.key))

    writer = StatusWriter(controller.status_of, ingress_status_patcher(api),
                          LoadBalancers(gateway_namespace=kube.gateway_namespace, cluster_domain=kube.cluster_domain), verify,
                          record=event_recorder(api, "kxds", identity), limiter=RateLimiter(kube.api_qps, kube.api_burst),
                          workers=kube.status_workers)
    controller.on_moved.append(writer.mark)

    def on_raw(key: ObjectKey, raw: Mapping[str, Any] | None) -> None:
        if key.kind == "Ingress":
            writer.observe(f"{key.namespace}/{key.name}", raw)
            if raw is None:
                prober.forget([f"{key.namespace}/{key.name}"])

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
        yield [asyncio.create_task(_write_statuses(writer, prober, controller, fleet, leads, leadership))], leads
    finally:
        await source.stop()
        if elector is not None:
            await asyncio.to_thread(elector.stop)


async def _write_statuses(writer: Any, prober: Any, controller: Controller, fleet: Fleet, leads: Callable[[], bool],
                          leadership: asyncio.Event) -> None:
    """Re-check statuses (as leader) whenever a rebuild, an ACK or leadership may have changed them;
    at least every second while anything is still being probed. Gateways coming or going, or a
    new leader, re-check every Ingress; otherwise only those that may have moved."""
    gateways, seen = -1, (-1, -1)
    while True:
        if (controller.rebuilds, fleet.generation) == seen:  # nothing moved since the last pass began
            waits = [asyncio.ensure_future(controller.wait_rebuilt()), asyncio.ensure_future(fleet.wait_changed()),
                     asyncio.ensure_future(leadership.wait())]
            await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
        if leadership.is_set() or len(fleet.gateways) != gateways:
            gateways = len(fleet.gateways)
            writer.mark_all()
        leadership.clear()
        await asyncio.sleep(0.005)  # let a burst of ACKs land
        # Taken before the pass: an ACK or rebuild that lands while it writes starts another pass
        # at once, instead of waiting for the next one or the one-second tick.
        seen = (controller.rebuilds, fleet.generation)
        if leads():
            await writer.sync()
        else:
            writer.mark_all()  # a replica that becomes leader starts from everything


async def wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (exit 0), or until a background loop crashes (exit 1), so that
    the orchestrator restarts kxds instead of it serving a configuration that no longer follows."""
    from kxds.kubeconfig import NoCredentials

    try:
        async with running(settings) as plane:
            return await _until_stopped(plane)
    except NoCredentials as exc:
        log.error("kxds.no_credentials", error=str(exc))
        print(f"kxds serve: {exc}", file=sys.stderr)
        return 2


async def _until_stopped(plane: Running) -> int:
    signal_task = asyncio.create_task(wait_for_signal())
    done, _ = await asyncio.wait([signal_task, *plane.tasks], return_when=asyncio.FIRST_COMPLETED)
    signal_task.cancel()
    for task in done - {signal_task}:
        error = task.exception() if not task.cancelled() else None
        log.error("kxds.crashed", task=task.get_coro().__qualname__, error=repr(error), exc_info=error)  # type: ignore[union-attr]
        return 1
    return 0
