"""Document shape bounds: aliases, depth, size — found without expanding or recursing."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import yaml

from kxds.model.errors import FieldError
from kxds.model.shape import MAX_DEPTH, MAX_NODES, check_shape


def nested(levels: int) -> Any:
    doc: Any = []
    for _ in range(levels - 2):  # with the outer mapping: `levels` containers in all
        doc = [doc]
    return {"spec": doc}


def test_a_kubernetes_object_passes() -> None:
    check_shape({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"ports": [{"port": 80}]}})


def test_an_alias_bomb_is_measured_without_expanding_it() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"b{n}: &b{n} [{', '.join([f'*b{n - 1}' if n else '*a'] * 10)}]\n" for n in range(9))
    with pytest.raises(FieldError, match="counting what its YAML aliases repeat") as error:
        check_shape(yaml.safe_load(text))  # 10^10 strings if expanded
    assert error.value.field.startswith("b")


def test_a_modest_alias_is_fine_and_a_self_reference_is_not() -> None:
    check_shape(yaml.safe_load("paths: &p [{splits: [{serviceName: a}]}]\nrules: [{http: {paths: *p}}, {http: {paths: *p}}]\n"))
    with pytest.raises(FieldError, match="refers to the value that contains it"):
        check_shape(yaml.safe_load("a: &a [1, *a]\n"))


@pytest.mark.parametrize(("levels", "ok"), [(MAX_DEPTH, True), (MAX_DEPTH + 1, False), (100_000, False)])
def test_depth_is_bounded_without_recursion(levels: int, ok: bool) -> None:
    if ok:
        check_shape(nested(levels))
    else:
        with pytest.raises(FieldError, match=f"deeper than {MAX_DEPTH}"):
            check_shape(nested(levels))


def test_size_is_bounded() -> None:
    with pytest.raises(FieldError, match=f"more than {MAX_NODES} values"):
        check_shape({"spec": list(range(MAX_NODES + 1))})
    with pytest.raises(FieldError, match="bytes of text"):
        check_shape({"spec": ["x" * (1 << 20)] * 9})


@pytest.mark.parametrize("kind", ["Ingress", "Service", "EndpointSlice"])
def test_reading_a_document_leaves_nothing_for_the_cyclic_gc(kind: str) -> None:
    """kxds pauses the cyclic GC while it translates and then freezes what is alive: a reference
    cycle made by a watch parsing meanwhile would stay for good. Reading must free all it made by
    reference counting alone."""
    from bench.generate import ingress, revision_objects
    from kxds.model.objects import Filters, parse_object

    doc = next(d for d in [ingress(1), *revision_objects(1, [8080])] if d["kind"] == kind)
    filters = Filters(ingress_class="kourier.ingress.networking.knative.dev", system_namespace="knative-serving")
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(20):
            check_shape(doc)
            assert parse_object(doc, filters) is not None
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()
