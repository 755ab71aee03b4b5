"""The Kubernetes watch's handling of events, fed event by event (the watch itself is tested end to
end in tests/kube): what is parsed and delivered, and what only the status writer sees."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kxds.model.objects import Filters, ObjectKey, Parsed
from kxds.sources.kubernetes import INGRESS_GROUP, INGRESS_VERSION, Kind, KindWatcher, KubernetesOptions
from tests.builders import DEFAULT_INGRESS_CLASS, ingress, path, rule, split


class Recorded:
    def __init__(self) -> None:
        self.delivered: list[tuple[dict[ObjectKey, Parsed], set[ObjectKey]]] = []
        self.raw: list[tuple[ObjectKey, Mapping[str, Any] | None]] = []

    def watcher(self, kind: str = "Ingress") -> KindWatcher:
        api_version = f"{INGRESS_GROUP}/{INGRESS_VERSION}" if kind == "Ingress" else "v1"
        never_listed = Kind(api_version, kind, lambda *args, **kwargs: None)
        filters = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")
        return KindWatcher(never_listed, filters, KubernetesOptions(), lambda up, gone: self.delivered.append((up, gone)),
                           lambda key, raw: self.raw.append((key, raw)))


def event(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "raw_object": copy.deepcopy(raw)}


def test_the_echo_of_a_status_write_is_seen_by_the_status_writer_and_not_parsed_again() -> None:
    recorded = Recorded()
    watcher = recorded.watcher()
    doc = ingress("hello", rule(["hello.example.com"], path(split("hello"))))
    watcher._handle(event("ADDED", doc))
    assert len(recorded.delivered) == 1
    written = {**doc, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}
    watcher._handle(event("MODIFIED", written))
    assert len(recorded.delivered) == 1  # the same Ingress: nothing to translate
    assert recorded.raw[-1][1] is not None and recorded.raw[-1][1]["status"] == written["status"]  # the writer sees its status


def test_a_new_generation_or_other_annotations_or_labels_are_parsed() -> None:
    recorded = Recorded()
    watcher = recorded.watcher()
    doc = ingress("hello", rule(["hello.example.com"], path(split("hello"))))
    watcher._handle(event("MODIFIED", doc))
    changes: list[dict[str, Any]] = [
        {**doc, "metadata": {**doc["metadata"], "generation": 2}, "spec": {"rules": [rule(["other.example.com"], path(split("hello")))]}},
        {**doc, "metadata": {**doc["metadata"], "generation": 2, "annotations": {**doc["metadata"]["annotations"], "kourier.knative.dev/disable-http2": "true"}}},
        {**doc, "metadata": {**doc["metadata"], "generation": 2, "labels": {"serving.knative.dev/route": "hello"}}},
    ]
    for number, changed in enumerate(changes, start=2):
        watcher._handle(event("MODIFIED", changed))
        assert len(recorded.delivered) == number
    (latest,) = recorded.delivered[-1][0].values()
    assert dict(getattr(latest, "labels")) == {"serving.knative.dev/route": "hello"}


def test_without_a_generation_every_change_is_parsed() -> None:
    recorded = Recorded()
    watcher = recorded.watcher()
    doc = ingress("hello", rule(["hello.example.com"], path(split("hello"))))
    del doc["metadata"]["generation"]
    for _ in range(3):
        watcher._handle(event("MODIFIED", doc))
    assert len(recorded.delivered) == 3


def test_other_kinds_are_always_parsed() -> None:
    recorded = Recorded()
    watcher = recorded.watcher("Service")
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "ns", "generation": 1},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    for _ in range(2):
        watcher._handle(event("MODIFIED", svc))
    assert len(recorded.delivered) == 2


def test_an_ingress_deleted_and_created_again_is_parsed() -> None:
    recorded = Recorded()
    watcher = recorded.watcher()
    doc = ingress("hello", rule(["hello.example.com"], path(split("hello"))))
    watcher._handle(event("ADDED", doc))
    watcher._handle(event("DELETED", doc))
    watcher._handle(event("ADDED", doc))
    watcher._handle(event("MODIFIED", {**doc, "spec": {"rules": [rule(["new.example.com"], path(split("hello")))]}, "metadata": {**doc["metadata"], "generation": 2}}))
    assert [bool(up) for up, _ in recorded.delivered] == [True, False, True, True]
