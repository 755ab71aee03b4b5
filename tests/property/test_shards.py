"""A cold start spread over processes: whatever share of the Ingresses another process translates,
the full translation that follows, seeded with its results, serves byte for byte what a translation
in one process serves, and uses the seeded results as they are."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kxds.controller import build_world
from kxds.engine.assemble import build_snapshot
from kxds.model.objects import ObjectKey, Parsed, parse_object
from kxds.settings import KOURIER_LAYOUT, SCOPED_LAYOUT, GatewaySettings
from kxds.translate import shards
from kxds.translate.gateway import TranslationCache, translate
from kxds.model.ingress import DISABLE_HTTP2_ANNOTATION
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.property.test_engine import CREATED, FILTERS, operations, served


def objects_after(steps: list[tuple[str, Any]]) -> list[Parsed]:
    objects: dict[ObjectKey, Parsed] = {}
    for op, item in steps:
        if op == "upsert":
            parsed = parse_object(item, FILTERS)
            assert parsed is not None
            objects[parsed[0]] = parsed[1]
        else:
            objects.pop(item, None)
    return list(objects.values())


@pytest.mark.parametrize("layout", [SCOPED_LAYOUT, KOURIER_LAYOUT])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(operations(), min_size=1, max_size=30), data=st.data())
def test_a_seeded_translation_serves_what_one_process_serves(layout: str, steps: list[tuple[str, Any]], data: st.DataObject) -> None:
    gateway = GatewaySettings(route_layout=layout)
    world = build_world(objects_after(steps))
    elsewhere = [i for i in world.ingresses if data.draw(st.booleans())]
    here = [i for i in world.ingresses if i not in elsewhere]
    cache = TranslationCache()
    shards.warm(world, gateway, here, cache)
    seeded_count = shards.seed(cache, world, gateway, elsewhere, shards.share(world, gateway, elsewhere))
    seeded = {i.key: cache.ingresses[i.key][1] for i in elsewhere if i.key in cache.ingresses}
    assert len(seeded) == seeded_count

    config = translate(world, gateway, cache)

    fresh = translate(world, gateway)
    assert served(build_snapshot(config, 1)) == served(build_snapshot(fresh, 1))
    assert dict(config.outcomes) == dict(fresh.outcomes)
    for key, result in seeded.items():
        if key in cache.ingresses:  # kept: its host was won, so the translation looked it up
            assert cache.ingresses[key][1] is result, f"{key} was translated again instead of taken from the seed"


def test_a_share_only_seeds_the_ingresses_handed_out() -> None:
    steps = [("upsert", doc) for doc in SHARED_SERVICE_DOCS]
    world = build_world(objects_after(steps))
    gateway = GatewaySettings()
    data = shards.share(world, gateway, world.ingresses)
    cache = TranslationCache()
    assert shards.seed(cache, world, gateway, world.ingresses[:1], data) == 1
    assert set(cache.ingresses) == {world.ingresses[0].key}


def test_a_cluster_two_shares_merge_differently_is_translated_again() -> None:
    """i0 (older) wants HTTP/2 to s0, i1 opts out: the served cluster is plain HTTP/1. A share
    holding only i0 built s0 with HTTP/2; the full translation must not serve that."""
    steps = [("upsert", doc) for doc in SHARED_SERVICE_DOCS]
    world = build_world(objects_after(steps))
    gateway = GatewaySettings()
    cache = TranslationCache()
    first, second = world.ingresses
    shards.seed(cache, world, gateway, [first], shards.share(world, gateway, [first]))
    shards.warm(world, gateway, [second], cache)
    config = translate(world, gateway, cache)
    assert served(build_snapshot(config, 1)) == served(build_snapshot(translate(world, gateway), 1))


def _shared_service_docs() -> list[dict[str, Any]]:
    second = ingress("i1", rule(["b.example.com"], path(split("s0", 100))), created=CREATED[1])
    second["metadata"]["annotations"][DISABLE_HTTP2_ANNOTATION] = "true"
    return [
        service("s0", port_name="http2"), endpoint_slice("s0", ["10.0.0.1"], 8080, port_name="http2"),
        ingress("i0", rule(["a.example.com"], path(split("s0", 100))), created=CREATED[0]), second,
    ]


SHARED_SERVICE_DOCS = _shared_service_docs()
