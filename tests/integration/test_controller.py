"""The controller's rebuild loop: bursts are coalesced, and a failed rebuild never stops it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from kxds.app import _write_statuses
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
    real = Controller._translate
    calls = []

    def flaky(self: Controller, *args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(self, *args)

    monkeypatch.setattr(Controller, "_translate", flaky)
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


async def test_an_endpoint_only_change_takes_the_fast_path_and_matches_a_full_rebuild() -> None:
    from tests.builders import backend, endpoint_slice, ingress, path, rule, split
    from kxds.xds.snapshot import set_version
    from kxds.resources import CLUSTER, ENDPOINT, ROUTE

    def parsed(docs: list[dict[str, Any]]) -> dict[ObjectKey, Any]:
        return {p[0]: p[1] for p in (parse_object(d, FILTERS) for d in docs) if p is not None}

    docs = [ingress(f"i{n}", rule([f"h{n}.example.com"], path(split(f"s{n}")))) for n in range(5)]
    docs += [d for n in range(5) for d in backend(f"s{n}", 8000 + n)]
    fleet = Fleet(Snapshot(serial=0, resources={}), Metrics())
    controller = Controller(fleet, GatewaySettings(), Metrics())
    controller.apply(parsed(docs))
    before = await controller.rebuild()
    before.type_version(ENDPOINT)  # computed, so the fast path carries it forward incrementally
    moved = endpoint_slice("s2", ["10.0.0.2", "10.0.0.3"], 9000)
    with structlog.testing.capture_logs() as logs:
        controller.apply(parsed([moved]))
        fast = await controller.rebuild()
    assert [e["event"] for e in logs] == ["snapshot.step"]
    reference = Controller(Fleet(Snapshot(serial=0, resources={}), Metrics()), GatewaySettings(), Metrics())
    reference.apply(parsed([d for d in docs if d["metadata"]["name"] != "s2-abc"] + [moved]))
    full = await reference.rebuild()
    for type_url in (CLUSTER, ENDPOINT, ROUTE):
        assert {n: r.version for n, r in fast.of_type(type_url).items()} == {n: r.version for n, r in full.of_type(type_url).items()}
    changed = {n for n, r in fast.of_type(ENDPOINT).items() if before.of_type(ENDPOINT)[n].version != r.version}
    assert changed == {"ns/s2"}
    assert fast.of_type(ROUTE) is before.of_type(ROUTE)  # untouched types are shared, not rebuilt
    assert fast.type_version(ENDPOINT) == set_version(fast.of_type(ENDPOINT)) == full.type_version(ENDPOINT)


async def test_ingress_changes_are_engine_steps_in_the_scoped_layout_and_match_a_full_rebuild() -> None:
    from tests.builders import backend, ingress, path, rule, split
    from kxds.settings import SCOPED_LAYOUT
    from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE

    def parsed(docs: list[dict[str, Any]]) -> dict[ObjectKey, Any]:
        return {p[0]: p[1] for p in (parse_object(d, FILTERS) for d in docs) if p is not None}

    def world(marker: str = "0", hosts: tuple[str, ...] = ("h2.example.com",), service: str = "s2") -> list[dict[str, Any]]:
        docs = [ingress(f"i{n}", rule(list(hosts) if n == 2 else [f"h{n}.example.com"], path(split(service if n == 2 else f"s{n}", Marker=marker if n == 2 else "0"))))
                for n in range(5)]
        return docs + [d for n in range(6) for d in backend(f"s{n}", 8000 + n)]

    async def full(docs: list[dict[str, Any]]) -> Snapshot:
        reference = Controller(Fleet(Snapshot(serial=0, resources={}), Metrics()), GatewaySettings(route_layout=SCOPED_LAYOUT), Metrics())
        reference.apply(parsed(docs))
        return await reference.rebuild()

    fleet = Fleet(Snapshot(serial=0, resources={}), Metrics())
    controller = Controller(fleet, GatewaySettings(route_layout=SCOPED_LAYOUT), Metrics())
    controller.apply(parsed(world()))
    before = await controller.rebuild()
    with structlog.testing.capture_logs() as logs:
        controller.apply(parsed(world(marker="1")))
        fast = await controller.rebuild()
    assert [e["event"] for e in logs] == ["snapshot.step"]
    reference = await full(world(marker="1"))
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE):
        assert {n: r.version for n, r in fast.of_type(type_url).items()} == {n: r.version for n, r in reference.of_type(type_url).items()}
        assert {n: r.needs for n, r in fast.of_type(type_url).items()} == {n: r.needs for n, r in reference.of_type(type_url).items()}
    changed = {n for n, r in fast.of_type(ROUTE).items() if before.of_type(ROUTE)[n].version != r.version}
    assert changed == {"external_services/ns/i2", "internal_services/ns/i2"}
    # i2 is ready once the gateways apply this snapshot; the others keep the serial they had.
    assert {k: v.since_serial for k, v in controller._readiness.served.items()} == {**{f"ns/i{n}": before.serial for n in range(5)}, "ns/i2": fast.serial}

    # New hosts and other backends are steps too (tests/property/test_engine.py walks the rest).
    for edited in (world(marker="1", hosts=("h2.example.com", "extra.example.com")), world(marker="1", service="s5")):
        with structlog.testing.capture_logs() as logs:
            controller.apply(parsed(edited))
            rebuilt = await controller.rebuild()
        assert [e["event"] for e in logs if e["event"].startswith("snapshot.")] == ["snapshot.step"]
        reference = await full(edited)
        for type_url in (CLUSTER, ROUTE, SCOPED_ROUTE):
            assert {n: r.version for n, r in rebuilt.of_type(type_url).items()} == {n: r.version for n, r in reference.of_type(type_url).items()}


async def test_a_rebuild_during_a_status_pass_starts_the_next_pass_at_once() -> None:
    """The status loop must not miss a rebuild (or an ACK) that lands while it writes: it would
    otherwise sit until its one-second tick, and `kn service create` with it."""
    fleet = Fleet(Snapshot(serial=0, resources={}), Metrics())
    controller = Controller(fleet, GatewaySettings(), Metrics(), debounce_seconds=0)
    second_pass = asyncio.Event()

    class Writer:
        passes = 0

        async def sync(self) -> None:
            self.passes += 1
            if self.passes == 1:  # a change arrives and is rebuilt while this pass is still writing
                before = controller.rebuilds
                controller.apply(upsert("late"))
                while controller.rebuilds == before:
                    await asyncio.sleep(0.005)
            elif self.passes == 2:
                second_pass.set()

        def mark_all(self) -> None:
            pass

    rebuilding = asyncio.create_task(controller.run())
    statuses = asyncio.create_task(_write_statuses(Writer(), None, controller, fleet, lambda: True, asyncio.Event()))
    try:
        await asyncio.wait_for(second_pass.wait(), 0.5)  # well inside the one-second tick
    finally:
        for task in (rebuilding, statuses):
            task.cancel()
        await asyncio.gather(rebuilding, statuses, return_exceptions=True)


async def test_a_change_noted_while_a_full_translation_runs_is_the_next_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full translation runs in a worker thread while the event loop keeps noting changes. One
    noted meanwhile must be translated by the next rebuild: the translation used to clear the
    engine's pending changes from its thread, and an Ingress created at that moment stayed
    'Uninitialized' until some later full rebuild (seen in the TLS end-to-end test)."""
    import threading

    from tests.builders import backend, ingress, path, rule, split

    def parsed(docs: list[dict[str, Any]]) -> dict[ObjectKey, Any]:
        return {p[0]: p[1] for p in (parse_object(d, FILTERS) for d in docs) if p is not None}

    fleet = Fleet(Snapshot(serial=0, resources={}), Metrics())
    controller = Controller(fleet, GatewaySettings(), Metrics())
    controller.apply(parsed([ingress("a", rule(["a.example.com"], path(split("s")))), *backend("s", 8000)]))
    await controller.rebuild()  # primed: later changes are steps
    noted, real, slowed = threading.Event(), Controller._translate, []

    def translate_after_a_change(self: Controller, *args: Any) -> Any:
        if not slowed:
            slowed.append(True)
            assert noted.wait(10)  # the change below lands while this translation runs
        return real(self, *args)

    monkeypatch.setattr(Controller, "_translate", translate_after_a_change)
    controller._engine.invalidate()  # the next rebuild is a full translation (as after a NACK)
    rebuilding = asyncio.create_task(controller.rebuild())
    while not slowed:
        await asyncio.sleep(0.01)
    controller.apply(parsed([ingress("b", rule(["b.example.com"], path(split("s"))))]))
    noted.set()
    await rebuilding
    assert (status := controller.status_of("ns/b")) is None or status.reason == "Uninitialized"  # not in that translation
    await controller.rebuild()
    status = controller.status_of("ns/b")
    assert status is not None and status.reason != "Uninitialized", status
