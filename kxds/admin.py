"""The admin HTTP endpoints: /ingresses, /gateways, /healthz, /readyz and Prometheus /metrics.

They are served from a thread of their own (hypercorn on its own event loop), so no number of
admin clients, slow or fast, can stall the loop that runs xDS: a page's data is taken from the
control plane at most once per change of state (one short call onto the xDS loop, shared by every
request waiting for it), and encoded in the admin thread. Requests have a read timeout, a cap on
incomplete headers, and a cap on how many are handled at once (503 beyond it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kxds.controller import Controller
from kxds.metrics import Metrics
from kxds.readiness import IngressStatus
from kxds.xds.fleet import Fleet
from kxds.xds.snapshot import SHORT_NAMES

log = structlog.get_logger("kxds.admin")

# At most this many requests are handled at once; more are answered 503 at once.
MAX_CONCURRENT_REQUESTS = 64
# A client has this long to send its request (headers and body), and an idle connection is closed.
READ_TIMEOUT_SECONDS = 5
MAX_INCOMPLETE_HEADER_BYTES = 16 * 1024

Page = Callable[[], Any]  # builds a page's data on the xDS loop; encoded as JSON in the admin thread


class AdminState:
    """What the pages show, read on the xDS loop: cheap objects, no encoding."""

    def __init__(self, controller: Controller, fleet: Fleet, metrics: Metrics, serving: Callable[[], bool]) -> None:
        self._controller, self._fleet, self._metrics, self._serving = controller, fleet, metrics, serving

    def generation(self) -> tuple[int, int]:
        """Changes whenever a page could: a snapshot published, a gateway's state moved."""
        return self._fleet.snapshot.serial, self._fleet.generation

    def ingresses(self) -> list[IngressStatus]:
        return self._controller.statuses()

    def gateways(self) -> Any:
        fleet = self._fleet
        return {
            "snapshot_serial": fleet.snapshot.serial,
            "gateways": [
                {
                    "id": g.id,
                    "node": g.node_id,
                    "peer": g.peer,
                    "identity": g.identity,
                    "synced": g.stream.synced_serial >= fleet.snapshot.serial,
                    "synced_serial": g.stream.synced_serial,
                    "acked": {SHORT_NAMES.get(t, t): s.acked.version for t, s in sorted(g.stream.types.items()) if s.acked},
                    "last_nack": g.last_nack,
                }
                for g in fleet.gateways.values()
            ],
        }

    def refresh_gauges(self) -> Any:
        """The gauges computed at scrape time: readiness, and gateways not in sync."""
        self._controller.statuses()
        self._metrics.unsynced.set(sum(g.stream.synced_serial < self._fleet.snapshot.serial for g in self._fleet.gateways.values()))
        return None

    def ready(self) -> bool:
        return self._controller.primed and self._serving()


class _Cache:
    """One page's encoded body, rebuilt once per generation however many requests ask at once."""

    def __init__(self) -> None:
        self.key: object = None
        self.body = b""
        self.lock = asyncio.Lock()


class AdminServer:
    def __init__(self, state: AdminState, metrics: Metrics, address: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self._state, self._metrics, self._xds_loop = state, metrics, loop
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(address)
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        self._caches: dict[str, _Cache] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="admin", daemon=True)
        self._started = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)
        self._socket.detach()  # hypercorn took the descriptor over and closed it

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._stop, self._slots = asyncio.Event(), asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        config = Config()
        config.bind = [f"fd://{self._socket.fileno()}"]
        config.accesslog = config.errorlog = None
        config.read_timeout = READ_TIMEOUT_SECONDS
        config.keep_alive_timeout = READ_TIMEOUT_SECONDS
        config.h11_max_incomplete_size = MAX_INCOMPLETE_HEADER_BYTES
        config.graceful_timeout = 1.0
        loop.call_soon(self._started.set)
        try:
            loop.run_until_complete(serve(self._app, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
        finally:
            loop.close()

    async def _from_xds_loop(self, read: Page) -> Any:
        """Run `read` on the xDS loop (where the control plane's state lives) and await it here."""
        future: Future[Any] = Future()

        def call() -> None:
            try:
                future.set_result(read())
            except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)

        self._xds_loop.call_soon_threadsafe(call)
        return await asyncio.wrap_future(future)

    async def _cached(self, name: str, read: Page, encode: Callable[[Any], bytes]) -> bytes:
        cache = self._caches.setdefault(name, _Cache())
        async with cache.lock:
            key = await self._from_xds_loop(self._state.generation)
            if key != cache.key:
                data = await self._from_xds_loop(read)
                cache.body, cache.key = encode(data), key
            return cache.body

    async def _page(self, path: str) -> tuple[int, bytes, str]:
        as_json: Callable[[Any], bytes] = lambda data: json.dumps(data).encode()  # noqa: E731
        match path:
            case "/healthz":
                # Liveness: the process answers. Never tied to start-up, so a slow start is not killed.
                return 200, b"ok\n", "text/plain"
            case "/readyz":
                ready = await self._from_xds_loop(self._state.ready)
                return (200, b"ready\n", "text/plain") if ready else (503, b"priming\n", "text/plain")
            case "/ingresses":
                return 200, await self._cached(path, self._state.ingresses, _statuses_json), "application/json"
            case "/gateways":
                return 200, await self._cached(path, self._state.gateways, as_json), "application/json"
            case "/metrics":
                await self._cached(path, self._state.refresh_gauges, lambda _: b"")
                return 200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST
        return 404, b"not found\n", "text/plain"

    async def _app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        assert self._slots is not None
        if self._slots.locked():
            status, body, content_type = 503, b"too many admin requests\n", "text/plain"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"method not allowed\n", "text/plain"
        else:
            async with self._slots:
                try:
                    status, body, content_type = await self._page(scope["path"])
                except Exception:  # a page that fails says so; the admin server stays up
                    log.exception("admin.page_failed", path=scope["path"])
                    status, body, content_type = 500, b"internal error\n", "text/plain"
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


def _statuses_json(statuses: list[IngressStatus]) -> bytes:
    """The /ingresses page, encoded one entry at a time: the page is polled while a gateway first
    syncs, when kxds's memory peaks, and 10,000 entries held as dicts at once are megabytes more."""
    return b"[" + b", ".join(json.dumps(status.as_json()).encode() for status in statuses) + b"]"
