"""The controller's rebuild loop: bursts are coalesced, and a failed rebuild never stops it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

import kxds.controller as controller_module
from kxds.controller import Controller
from kxds.metrics import Metrics
from kxds.model.objects import ObjectKey, parse_object, Filters
from kxds.settings import DEFAULT_INGRESS_CLASS, GatewaySettings
from kxds.xds.fleet import Fleet
from kxds.xds.snapshot import Snapshot
from tests.builders import service

FILTERS = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")


def upsert(name: str) -> dict[ObjectKey, Any]:
    parsed = parse_object(service(name), FILTERS)
    assert parsed is not None
    return {parsed[0]: parsed[1]}


async def test_a_failed_rebuild_is_logged_and_the_next_change_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(Snapshot(serial=0, resources={}), Metrics())
    controller = Controller(fleet, GatewaySettings(), Metrics(), debounce_seconds=0.01)
    real = controller_module._translate
    calls = []

    def flaky(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(controller_module, "_translate", flaky)
    loop = asyncio.create_task(controller.run())
    try:
        with structlog.testing.capture_logs() as logs:
            controller.apply(upsert("a"))
            while len(calls) < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert fleet.snapshot.serial == 0  # nothing published from the failed attempt
            controller.apply(upsert("b"))
            controller.apply(upsert("c"))  # a burst: one rebuild
            while fleet.snapshot.serial == 0:
                await asyncio.sleep(0.01)
        assert any(e["event"] == "snapshot.failed" and e["log_level"] == "error" for e in logs)
        assert not loop.done()
        assert len(calls) == 2
    finally:
        loop.cancel()
