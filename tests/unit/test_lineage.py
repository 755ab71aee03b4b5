"""Lineage: comparisons over recorded derivations give exactly what a full comparison gives."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kxds.resources import ROUTE, SCOPED_ROUTE
from kxds.xds.lineage import Lineage, Resources, Tally
from kxds.xds.patched import copied
from kxds.xds.snapshot import Resource, set_version

NAMES = [f"r{n}" for n in range(12)]


def resource(name: str, version: int) -> Resource:
    return Resource(name=name, version=str(version), asks=((ROUTE, f"route-{version % 3}"),))


def full_differing(a: Resources, b: Resources) -> list[str]:
    return sorted(n for n, r in a.items() if n not in b or b[n].version != r.version)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(st.none(), st.integers(0, 5))), max_size=4), min_size=1, max_size=12),
       st.data())
def test_differing_missing_tallies_and_versions_match_a_full_comparison(steps: list[list[tuple[str, Any]]], data: st.DataObject) -> None:
    lineage = Lineage(capacity=6)
    mappings: list[Resources] = [{n: resource(n, 0) for n in NAMES[:6]}]
    lineage.known_version(mappings[0], int(set_version(mappings[0]), 16))  # as a snapshot's own mapping
    for step in steps:
        parent = data.draw(st.sampled_from(mappings))  # a derivation tree, not only a chain
        expected = copied(parent)
        for name, version in step:
            if version is None:
                expected.pop(name, None)
            else:
                expected[name] = resource(name, version)
        if data.draw(st.booleans()):  # a patched mapping (as streams derive), or a copy (as snapshots step)
            child: Resources = lineage.derive(parent, {name: expected.get(name) for name, _ in step})
            assert dict(child) == expected and len(child) == len(expected) and list(child) == list(dict(child))
            assert all(child.get(n) == expected.get(n) and (n in child) == (n in expected) for n in NAMES)
            assert copied(child) == expected
        else:
            child = expected
            lineage.record(child, parent, [name for name, _ in step])
        mappings.append(child)
    routes, scopes = Tally("asks", ROUTE), Tally("asks", SCOPED_ROUTE)
    for a in mappings:
        for b in mappings:
            assert lineage.differing(a, b) == full_differing(a, b)
            assert lineage.missing(a, b) == sorted(n for n in b if n not in a)
        assert lineage.version(a) == set_version(a)
    for a in data.draw(st.lists(st.sampled_from(mappings), min_size=1, max_size=12)):  # a role's mapping moving about the tree
        counts = dict(routes.counts)
        moved = lineage.follow(routes, a)
        expected = Counter(n for r in a.values() for t, n in r.asks if t == ROUTE)
        assert routes.counts == expected and all(routes.counts[n] > 0 for n in routes.counts)
        if moved is not None:  # every name whose count changed is reported
            assert {n for n in expected.keys() | counts.keys() if expected.get(n) != counts.get(n)} <= moved
        lineage.follow(scopes, a)
        assert not scopes.counts


def test_unrelated_mappings_are_compared_in_full() -> None:
    lineage = Lineage()
    a = {"x": resource("x", 1)}
    b = {"x": resource("x", 2), "y": resource("y", 1)}
    assert lineage.between(a, b) is None
    assert lineage.differing(b, a) == ["x", "y"] and lineage.missing(a, b) == ["y"]
