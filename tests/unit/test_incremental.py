"""Incremental translation: cached results equal a fresh translation, and only what depends on a
change is translated again."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from kxds import baseline
from kxds.controller import build_world
from kxds.model.objects import parse_object
from kxds.settings import KOURIER_LAYOUT, GatewaySettings
from kxds.translate.gateway import GatewayConfig, TranslationCache, translate
from kxds.engine.assemble import build_snapshot
from kxds.resources import CLUSTER, ENDPOINT, ROUTE
from tests.builders import backend, endpoint_slice, ingress, path, rule, split
from tests.unit.test_translate import FILTERS


def world(docs: list[dict[str, Any]]) -> Any:
    return build_world(p[1] for p in (parse_object(d, FILTERS) for d in docs) if p is not None)


def docs(marker: str = "0", port: int = 8000, port_name: str = "http") -> list[dict[str, Any]]:
    out = [ingress(f"i{n}", rule([f"h{n}.example.com"], path(split(f"s{n}", Marker=marker if n == 5 else "0")))) for n in range(10)]
    out += [d for n in range(10) for d in backend(f"s{n}", port + n, port_name=port_name if n == 3 else "http")]
    return out


def same_output(a: GatewayConfig, b: GatewayConfig) -> bool:
    return all([(e.name, e.version, e.data) for e in a.encoded[t]] == [(e.name, e.version, e.data) for e in b.encoded[t]] for t in a.encoded)


def vhost_objects(config: GatewayConfig) -> dict[str, Any]:
    return {v.name: v for table in config.route_tables for v in table.vhosts}


def test_cached_translation_equals_a_fresh_one_and_reuses_unchanged_ingresses() -> None:
    cache = TranslationCache()
    first = translate(world(docs()), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    changed = docs(marker="1")
    second = translate(world(changed), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    assert same_output(second, translate(world(changed), GatewaySettings(route_layout=KOURIER_LAYOUT)))
    before, after = vhost_objects(first), vhost_objects(second)
    reused = {n for n in after if n in before and after[n] is before[n]}
    assert reused == set(after) - {"(ns/i5).Domain[h5.example.com]"}


def test_a_service_change_retranslates_the_ingresses_that_use_it() -> None:
    cache = TranslationCache()
    first = translate(world(docs()), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    changed = docs(port_name="http2")  # service s3 now speaks h2c
    second = translate(world(changed), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    assert same_output(second, translate(world(changed), GatewaySettings(route_layout=KOURIER_LAYOUT)))
    clusters_before = {e.name: e for e in first.encoded[CLUSTER]}
    clusters_after = {e.name: e for e in second.encoded[CLUSTER]}
    assert {n for n in clusters_after if clusters_after[n] is not clusters_before[n]} == {"ns/s3"}


def test_an_endpoint_change_is_one_load_assignment() -> None:
    cache = TranslationCache()
    base = docs()
    first = translate(world(base), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    moved = [d for d in base if not (d["kind"] == "EndpointSlice" and d["metadata"]["name"] == "s7-abc")]
    moved.append(endpoint_slice("s7", ["10.0.0.7"], 9000))
    second = translate(world(moved), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    assert same_output(second, translate(world(moved), GatewaySettings(route_layout=KOURIER_LAYOUT)))
    for type_url, changed in ((ENDPOINT, {"ns/s7"}), (CLUSTER, set()), (ROUTE, set())):
        before = {e.name: e.version for e in first.encoded[type_url]}
        assert {e.name for e in second.encoded[type_url] if before.get(e.name) != e.version} == changed, type_url


def test_the_cache_forgets_what_is_gone() -> None:
    cache = TranslationCache()
    translate(world(docs()), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    translate(world([d for d in docs() if d["metadata"]["name"] not in ("i2", "s2")]), GatewaySettings(route_layout=KOURIER_LAYOUT), cache)
    assert "ns/i2" not in cache.ingresses and len(cache.ingresses) == 9 and len(cache.clusters) == 9


def test_the_kourier_baseline_inlines_endpoints_and_re_versions_everything() -> None:
    config = baseline.inline_endpoints(translate(world(docs()), GatewaySettings(route_layout=KOURIER_LAYOUT)))
    assert config.encoded[ENDPOINT] == ()
    clusters = [cluster_pb2.Cluster.FromString(e.data) for e in config.encoded[CLUSTER]]
    assert clusters and all(c.type == cluster_pb2.Cluster.STATIC and c.load_assignment.endpoints[0].lb_endpoints for c in clusters)
    assert all(not any(t == ENDPOINT for t, _ in needs) for needs in config.cluster_needs.values())
    first, second = baseline.fresh_versions(build_snapshot(config, 1)), baseline.fresh_versions(build_snapshot(config, 2))
    for type_url, resources in first.resources.items():
        assert all(resources[n].version != second.of_type(type_url)[n].version for n in resources)
