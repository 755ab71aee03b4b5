"""The admin HTTP endpoints: /ingresses, /gateways, /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kxds.controller import Controller
from kxds.metrics import Metrics
from kxds.xds.fleet import Fleet
from kxds.xds.snapshot import SHORT_NAMES


def admin_app(controller: Controller, fleet: Fleet, metrics: Metrics, serving: Callable[[], bool]) -> web.Application:
    async def ingresses(_: web.Request) -> web.Response:
        return web.json_response([s.as_json() for s in controller.statuses()])

    async def gateways(_: web.Request) -> web.Response:
        body = {
            "snapshot_serial": fleet.snapshot.serial,
            "gateways": [
                {
                    "id": g.id,
                    "node": g.node_id,
                    "peer": g.peer,
                    "synced": g.stream.synced_serial >= fleet.snapshot.serial,
                    "synced_serial": g.stream.synced_serial,
                    "acked": {SHORT_NAMES.get(t, t): s.acked.version for t, s in sorted(g.stream.types.items()) if s.acked},
                    "last_nack": g.last_nack,
                }
                for g in fleet.gateways.values()
            ],
        }
        return web.json_response(body)

    async def healthz(_: web.Request) -> web.Response:
        # Liveness: the process answers. Never tied to priming, so a slow start is not killed.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if controller.primed and serving():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="priming\n")

    async def prometheus(_: web.Request) -> web.Response:
        controller.statuses()  # refresh the readiness gauges
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/ingresses", ingresses)
    app.router.add_get("/gateways", gateways)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
