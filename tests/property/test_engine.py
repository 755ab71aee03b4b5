"""The incremental engine's contract: after any sequence of changes, what it serves is byte for byte
what a fresh full translation of the same objects serves (versions, bytes, prerequisites, what
gateways ask for), and every Ingress has the outcome the full translation gives it."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kxds.engine.assemble import build_snapshot
from kxds.engine.incremental import Engine
from kxds.model.objects import Filters, ObjectKey, Parsed, parse_object
from kxds.settings import DEFAULT_INGRESS_CLASS, KOURIER_LAYOUT, SCOPED_LAYOUT, GatewaySettings
from kxds.translate.gateway import translate
from kxds.xds.snapshot import Snapshot
from tests.builders import config_map, endpoint_slice, ingress, path, rule, service, split
from tests.certificates import self_signed, tls_secret

FILTERS = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")
HOSTS = ["a.example.com", "b.example.com", "c.example.com", "a.ns", "a.ns.svc", "*.wild.example.com"]
SERVICES = ["s0", "s1", "s2"]
CREATED = ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]


@functools.cache
def certificate() -> tuple[bytes, bytes]:
    return self_signed("a.example.com")


def ingress_doc(draw: Any, name: str) -> dict[str, Any]:
    rules = []
    for _ in range(draw(st.integers(1, 2))):
        hosts = draw(st.lists(st.sampled_from(HOSTS), min_size=0, max_size=2, unique=True))
        splits = draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=2, unique=True))
        percents = [100] if len(splits) == 1 else [90, 10]
        port = draw(st.sampled_from([80, "http", 81]))
        paths = [path(*(split(s, p, port=port, Marker=draw(st.sampled_from(["x", "y"]))) for s, p in zip(splits, percents)),
                      prefix=draw(st.sampled_from(["", "/p"])))]
        rules.append(rule(hosts, *paths, visibility=draw(st.sampled_from(["ExternalIP", "ClusterLocal"]))))
    spec: dict[str, Any] = {"httpOption": draw(st.sampled_from(["Enabled", "Redirected"]))}
    if draw(st.integers(0, 9)) == 0:  # now and then HTTPS, which takes the full path
        spec["tls"] = [{"hosts": ["a.example.com"], "secretName": "cert", "secretNamespace": "ns"}]
    return ingress(name, *rules, created=draw(st.sampled_from(CREATED)), **spec)


@st.composite
def operations(draw: Any) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["ingress", "ingress", "ingress", "delete-ingress", "service", "delete-service",
                                 "slice", "delete-slice", "secret", "config"]))
    match kind:
        case "ingress":
            return "upsert", ingress_doc(draw, f"i{draw(st.integers(0, 4))}")
        case "delete-ingress":
            return "delete", ObjectKey("Ingress", "ns", f"i{draw(st.integers(0, 4))}")
        case "service":
            name = draw(st.sampled_from(SERVICES))
            if draw(st.booleans()):
                return "upsert", service(name, external_name="backend.example.org")
            return "upsert", service(name, port=draw(st.sampled_from([80, 81])), port_name=draw(st.sampled_from(["http", "http2"])))
        case "delete-service":
            return "delete", ObjectKey("Service", "ns", draw(st.sampled_from(SERVICES)))
        case "slice":
            name = draw(st.sampled_from(SERVICES))
            addresses = draw(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), min_size=1, max_size=2, unique=True))
            return "upsert", endpoint_slice(name, addresses, draw(st.sampled_from([8080, 9090])))
        case "delete-slice":
            return "delete", ObjectKey("EndpointSlice", "ns", f"{draw(st.sampled_from(SERVICES))}-abc")
        case "secret":
            cert, key = certificate()
            return "upsert", tls_secret(draw(st.sampled_from(["cert", "unused"])), "ns", cert, key)
        case _:
            return "upsert", config_map("config-kourier", {"enable-service-access-logging": draw(st.sampled_from(["true", "false"]))})


def served(snapshot: Snapshot) -> dict[str, dict[str, tuple[str, bytes, object, object]]]:
    return {t: {n: (r.version, r.data, r.needs, r.asks) for n, r in of_type.items()} for t, of_type in snapshot.resources.items() if of_type}


def check(layout: str, steps: list[tuple[str, Any]]) -> int:
    """Run the steps through one engine; after each, compare with a fresh full translation.
    Returns how many were incremental steps."""
    gateway = GatewaySettings(route_layout=layout)
    engine = Engine(gateway)
    objects: dict[ObjectKey, Parsed] = {}
    snapshot = Snapshot(serial=0, resources={})
    incremental = 0
    for serial, (op, item) in enumerate([("prime", None), *steps], start=1):
        if op == "upsert":
            parsed = parse_object(item, FILTERS)
            assert parsed is not None
            key, obj = parsed
            before = objects.get(key)
            if before == obj:
                continue
            objects[key] = obj
            engine.note(f"{key.namespace}/{key.name}", key.kind, before, obj)
        elif op == "delete":
            before = objects.pop(item, None)
            if before is None:
                continue
            engine.note(f"{item.namespace}/{item.name}", item.kind, before, None)
        step = engine.step(serial, snapshot) if op != "prime" else None
        if step is None:
            _, snapshot = engine.full(engine.take_world(), serial, snapshot)
        else:
            incremental += 1
            snapshot = step.snapshot
        world = engine.world()
        fresh = translate(world, gateway)
        assert served(snapshot) == served(build_snapshot(fresh, serial)), f"after {op} {item!r}"
        assert {k: e.outcome for k, e in engine.entries.items()} == dict(fresh.outcomes)
        for type_url in snapshot.resources:  # the folded type versions too
            assert snapshot.type_version(type_url) == build_snapshot(fresh, serial).type_version(type_url)
    return incremental


@pytest.mark.parametrize("layout", [SCOPED_LAYOUT, KOURIER_LAYOUT])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(operations(), min_size=1, max_size=25))
def test_every_step_serves_what_a_full_translation_serves(layout: str, steps: list[tuple[str, Any]]) -> None:
    check(layout, steps)


def test_the_life_cycle_of_a_knative_service_is_all_steps() -> None:
    """Create (Services, slices, Ingress), roll out, conflict, delete: no full translation."""
    def ksvc(name: str, revision: str, created: str = CREATED[0]) -> dict[str, Any]:
        return ingress(name, rule([f"{name}.example.com"], path(split(revision, 100))), created=created)

    steps: list[tuple[str, Any]] = [
        ("upsert", service("s0")), ("upsert", endpoint_slice("s0", ["10.0.0.1"], 8080)), ("upsert", ksvc("i0", "s0")),
        ("upsert", service("s1")), ("upsert", endpoint_slice("s1", ["10.0.0.2"], 8080)), ("upsert", ksvc("i0", "s1")),
        ("upsert", ksvc("i1", "s1", CREATED[1]) | {"spec": ksvc("i0", "s1")["spec"]}),  # contends for i0's host and loses
        ("delete", ObjectKey("Ingress", "ns", "i0")),  # i1 takes the host over
        ("delete", ObjectKey("Service", "ns", "s0")), ("delete", ObjectKey("EndpointSlice", "ns", "s0-abc")),
        ("delete", ObjectKey("Ingress", "ns", "i1")),
    ]
    assert check(SCOPED_LAYOUT, steps) == len(steps)
