"""Ingress defaults and validation: every rule of knative-ingress-contract.md §3–§4, table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kxds.model.ingress import HTTPOption, Ingress, RejectedIngress, Visibility, parse_ingress


def ingress(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {"namespace": "ns", "name": "ing", "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "rules": [
                {
                    "hosts": ["a.example.com"],
                    "http": {"paths": [{"splits": [{"serviceNamespace": "ns", "serviceName": "svc", "servicePort": 80}]}]},
                }
            ]
        },
    }
    base["spec"].update(spec)
    return base


def valid(raw: dict[str, Any]) -> Ingress:
    parsed = parse_ingress(raw)
    assert isinstance(parsed, Ingress), parsed
    return parsed


def test_defaults_visibility_and_single_split_percent() -> None:
    parsed = valid(ingress())
    assert parsed.rules[0].visibility is Visibility.EXTERNAL_IP
    assert parsed.rules[0].paths[0].splits[0].percent == 100
    assert parsed.http_option is HTTPOption.ENABLED
    assert (parsed.namespace, parsed.name, parsed.generation) == ("ns", "ing", 3)


def test_defaults_do_not_touch_the_input() -> None:
    raw = ingress()
    before = copy.deepcopy(raw)
    parse_ingress(raw)
    assert raw == before


def test_hosts_are_not_required_and_empty_hosts_match_everything() -> None:
    raw = ingress()
    del raw["spec"]["rules"][0]["hosts"]
    assert valid(raw).rules[0].hosts == ()


def _rule(raw: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = raw["spec"]["rules"][0]
    return rule


def _split(raw: dict[str, Any]) -> dict[str, Any]:
    split: dict[str, Any] = _rule(raw)["http"]["paths"][0]["splits"][0]
    return split


REJECTIONS = [
    # (mutation, field named in the error, words of the problem)
    (lambda r: r.update(spec={}), "spec", "missing"),
    (lambda r: r["spec"].update(rules=[]), "spec.rules", "missing"),
    (lambda r: r["spec"].update(rules=[{}]), "spec.rules[0]", "missing"),
    (lambda r: _rule(r).pop("http"), "spec.rules[0].http", "missing"),
    (lambda r: _rule(r)["http"].update(paths=[]), "spec.rules[0].http.paths", "missing"),
    (lambda r: _rule(r)["http"].update(paths=[{}]), "spec.rules[0].http.paths[0]", "missing"),
    (lambda r: _rule(r)["http"]["paths"][0].update(splits=[]), "spec.rules[0].http.paths[0].splits", "missing"),
    (lambda r: _rule(r)["http"]["paths"][0].update(splits=[{}]), "spec.rules[0].http.paths[0].splits[0]", "missing"),
    (lambda r: _split(r).update(percent=101), "splits[0].percent", "between 0 and 100"),
    (lambda r: _split(r).update(percent=-1), "splits[0].percent", "between 0 and 100"),
    (lambda r: _split(r).pop("serviceNamespace"), "splits[0].serviceNamespace", "missing"),
    (lambda r: _split(r).update(serviceNamespace="other"), "splits[0].serviceNamespace", "must equal the Ingress namespace"),
    (lambda r: _split(r).pop("serviceName"), "splits[0].serviceName", "missing"),
    (lambda r: _split(r).pop("servicePort"), "splits[0].servicePort", "missing"),
    (lambda r: _split(r).update(servicePort=""), "splits[0].servicePort", "missing"),
    (lambda r: _split(r).update(servicePort=70000), "splits[0].servicePort", "1-65535"),
    (lambda r: _split(r).update(percent=60), "paths[0].splits", "add up to 100, got 60"),
    (lambda r: r["spec"].update(tls=[{}]), "spec.tls[0]", "missing"),
    (lambda r: r["spec"].update(tls=[{"secretNamespace": "ns"}]), "spec.tls[0].secretName", "missing"),
    (lambda r: r["spec"].update(tls=[{"secretName": "s"}]), "spec.tls[0].secretNamespace", "missing"),
    (lambda r: r["spec"].update(httpOption="Sometimes"), "spec.httpOption", "invalid value"),
    # Beyond Knative's webhook: what Envoy would refuse is refused here, naming the field.
    (lambda r: _rule(r).update(hosts=["bad host!"]), "spec.rules[0].hosts[0]", "invalid host"),
    (lambda r: _rule(r).update(visibility="Public"), "spec.rules[0].visibility", "invalid value"),
    (lambda r: _split(r).update(appendHeaders={"Bad Name": "x"}), "appendHeaders.Bad Name", "invalid header name"),
    (lambda r: _split(r).update(appendHeaders={"Host": "x"}), "appendHeaders.Host", "use rewriteHost"),
    (lambda r: _rule(r)["http"]["paths"][0].update(appendHeaders={"X": "a\nb"}), "appendHeaders.X", "control characters"),
    (lambda r: _rule(r)["http"]["paths"][0].update(headers={"X": {"exact": "a\rb"}}), "headers.X.exact", "control characters"),
    # Envoy's own limits (its protoc-gen-validate annotations and what its HTTP codec does),
    # named with the field and the number, before Envoy ever sees them.
    (lambda r: _rule(r)["http"]["paths"][0].update(appendHeaders={"X-Long": "v" * 20000}), "http.paths[0].appendHeaders.X-Long",
     "value is 20000 bytes; Envoy accepts at most 16384"),
    (lambda r: _split(r).update(appendHeaders={"X" * 20000: "v"}), "splits[0].appendHeaders.", "header name is 20000 bytes; Envoy accepts at most 16384"),
    (lambda r: _rule(r)["http"]["paths"][0].update(appendHeaders={f"X-{n}": "v" for n in range(1001)}), "paths[0].appendHeaders", "1001 headers"),
    (lambda r: _rule(r)["http"]["paths"][0].update(appendHeaders={f"X-{n}": "v" for n in range(1000)}), "paths[0].appendHeaders", "1000 headers"),
    (lambda r: _split(r).update(appendHeaders={f"X-{n}": "v" for n in range(1001)}), "splits[0].appendHeaders", "1001 headers"),
    (lambda r: _split(r).update(appendHeaders={"X-Split": "v" * 20000}), "splits[0].appendHeaders.X-Split", "20000 bytes"),
    (lambda r: _rule(r)["http"]["paths"][0].update(appendHeaders={"X": "a\x01b"}), "appendHeaders.X", "control characters"),
    (lambda r: _rule(r)["http"]["paths"][0].update(appendHeaders={"Connection": "close"}), "appendHeaders.Connection", "hop-by-hop"),
    (lambda r: _split(r).update(appendHeaders={"transfer-encoding": "chunked"}), "appendHeaders.transfer-encoding", "hop-by-hop"),
    (lambda r: _split(r).update(appendHeaders={"TE": "trailers"}), "appendHeaders.TE", "hop-by-hop"),
    (lambda r: _split(r).update(appendHeaders={"Upgrade": "websocket"}), "appendHeaders.Upgrade", "hop-by-hop"),
    (lambda r: _split(r).update(appendHeaders={":path": "/x"}), "appendHeaders.:path", "invalid header name"),
    (lambda r: _rule(r)["http"]["paths"][0].update(headers={"X": {"exact": "v" * 70000}}), "headers.X.exact", "70000 bytes"),
    (lambda r: _rule(r)["http"]["paths"][0].update(path="/" + "p" * 70000), "paths[0].path", "bytes; Envoy accepts at most"),
    (lambda r: _rule(r)["http"]["paths"][0].update(path="api"), "paths[0].path", "must start with '/'"),
    (lambda r: _rule(r)["http"]["paths"][0].update(path="/a\x7fb"), "paths[0].path", "control characters"),
    (lambda r: _rule(r)["http"]["paths"][0].update(timeout="100000000h"), "paths[0].timeout", "longest timeout Envoy accepts"),
    (lambda r: _rule(r)["http"]["paths"][0].update(timeout="9223372036s"), "paths[0].timeout", "longest timeout Envoy accepts"),
    (lambda r: _rule(r)["http"]["paths"][0].update(timeout="soon"), "paths[0].timeout", "invalid duration"),
    (lambda r: _split(r).update(servicePort=[80]), "splits[0].servicePort", "expected an integer"),
    (lambda r: _rule(r).update(hosts="a.example.com"), "spec.rules[0].hosts", "expected a list"),
]


@pytest.mark.parametrize(("mutate", "field", "problem"), REJECTIONS)
def test_invalid_ingress_is_rejected_naming_the_field(mutate: Any, field: str, problem: str) -> None:
    raw = ingress()
    mutate(raw)
    parsed = parse_ingress(raw)
    assert isinstance(parsed, RejectedIngress)
    message = str(parsed.error)
    assert message.startswith("Ingress ns/ing: ")
    assert field in parsed.error.field
    assert problem in message
    assert len(parsed.hash) == 64  # still reported with its probe hash


@pytest.mark.parametrize("spec", [
    {"appendHeaders": {"X-Edge": "v" * 16384, "X" * 16384: "v"}},
    {"appendHeaders": {f"X-{n}": "v" for n in range(999)}},
    {"timeout": "9223372035s"},
    {"path": "/" + "p" * 16383, "headers": {"X": {"exact": "v" * 16384}}},
    {"appendHeaders": {"X-Tab": "a\tb"}},
])
def test_values_at_envoys_limits_are_valid(spec: dict[str, Any]) -> None:
    raw = ingress()
    _rule(raw)["http"]["paths"][0].update(spec)
    valid(raw)


def test_the_limits_are_envoys_own() -> None:
    """The bounds checked above are the protoc-gen-validate annotations of the Envoy API."""
    from envoy.config.core.v3 import base_pb2
    from envoy.config.route.v3 import route_components_pb2 as rc
    from validate import validate_pb2

    from kxds.model import ingress as model

    def rules(message: Any, field: str) -> Any:
        return message.DESCRIPTOR.fields_by_name[field].GetOptions().Extensions[validate_pb2.rules]

    assert rules(base_pb2.HeaderValue, "key").string.max_bytes == model.MAX_HEADER_BYTES
    assert rules(base_pb2.HeaderValue, "value").string.max_bytes == model.MAX_HEADER_BYTES
    assert rules(rc.Route, "request_headers_to_add").repeated.max_items == model.MAX_ADDED_HEADERS
    assert rules(rc.WeightedCluster.ClusterWeight, "request_headers_to_add").repeated.max_items == model.MAX_ADDED_HEADERS


def test_a_lone_split_with_zero_percent_is_valid() -> None:
    raw = ingress()
    _split(raw)["percent"] = 0
    assert valid(raw).rules[0].paths[0].splits[0].percent == 100


def test_splits_summing_to_100() -> None:
    raw = ingress()
    _rule(raw)["http"]["paths"][0]["splits"] = [
        {"serviceNamespace": "ns", "serviceName": "a", "servicePort": 80, "percent": 90},
        {"serviceNamespace": "ns", "serviceName": "b", "servicePort": "http", "percent": 10},
    ]
    splits = valid(raw).rules[0].paths[0].splits
    assert [(s.service_name, s.service_port, s.percent) for s in splits] == [("a", 80, 90), ("b", "http", 10)]


def test_header_matches_and_added_headers_are_sorted() -> None:
    raw = ingress()
    path = _rule(raw)["http"]["paths"][0]
    path["headers"] = {"Z": {"exact": "1"}, "A": {"exact": ""}}
    path["appendHeaders"] = {"Y": "2", "B": "1"}
    parsed = valid(raw).rules[0].paths[0]
    assert parsed.headers == (("A", ""), ("Z", "1"))
    assert parsed.append_headers == (("B", "1"), ("Y", "2"))


@pytest.mark.parametrize(("text", "seconds"), [("48h0m0s", 172800.0), ("1m30s", 90.0), ("250ms", 0.25), ("0", 0.0)])
def test_legacy_timeout_is_a_go_duration(text: str, seconds: float) -> None:
    raw = ingress()
    _rule(raw)["http"]["paths"][0]["timeout"] = text
    assert valid(raw).rules[0].paths[0].timeout_seconds == seconds


def test_removed_fields_are_ignored() -> None:
    raw = ingress(visibility="ClusterLocal")
    _rule(raw)["http"]["paths"][0]["retries"] = {"attempts": 3}
    assert valid(raw).rules[0].visibility is Visibility.EXTERNAL_IP


def test_hosts_are_lowercased_and_deduplicated() -> None:
    raw = ingress()
    _rule(raw)["hosts"] = ["A.Example.com", "a.example.com"]
    assert valid(raw).rules[0].hosts == ("a.example.com",)


def test_disable_http2_annotation() -> None:
    raw = ingress()
    raw["metadata"]["annotations"] = {"kourier.knative.dev/disable-http2": "True"}
    assert valid(raw).disable_http2


def tagged(annotation: str | None, visibility: str = "ExternalIP", match: bool = False) -> Ingress | RejectedIngress:
    raw = ingress()
    rule = _rule(raw)
    rule["visibility"] = visibility
    rule["hosts"] = ["hello.default.example.com"] if visibility == "ExternalIP" else ["hello.default.svc.cluster.local"]
    tag_path = {"splits": [{"serviceNamespace": "ns", "serviceName": "svc-2", "servicePort": 80}], "appendHeaders": {"Knative-Serving-Tag": "canary"}}
    if match:
        tag_path["headers"] = {"Knative-Serving-Tag": {"exact": "canary"}}
    rule["http"]["paths"].insert(0, tag_path)
    if annotation is not None:
        raw["metadata"]["annotations"] = {"networking.internal.knative.dev/tag-to-host": annotation}
    return parse_ingress(raw)


CANARY = '{"canary": ["canary-hello.default.example.com", "canary-hello.default.svc.cluster.local"], "empty": []}'


def test_tag_to_host_serves_an_append_only_tag_path_on_the_tags_external_hosts() -> None:
    parsed = tagged(CANARY)
    assert isinstance(parsed, Ingress) and not parsed.notes
    assert [r.hosts for r in parsed.rules] == [("hello.default.example.com",), ("canary-hello.default.example.com",)]
    assert parsed.rules[1].paths == (parsed.rules[0].paths[0],)  # only the tag's path, unchanged
    assert parsed.hash == tagged(None).hash  # the probe hash covers the spec, not the annotation or the tag rules


def test_tag_to_host_on_a_cluster_local_rule_adds_the_local_hosts_with_their_short_forms() -> None:
    parsed = tagged(CANARY, visibility="ClusterLocal")
    assert isinstance(parsed, Ingress)
    assert parsed.rules[1].hosts == ("canary-hello.default.svc.cluster.local", "canary-hello.default.svc", "canary-hello.default")


def test_a_tag_path_matching_on_the_header_gets_no_tag_hosts() -> None:
    parsed = tagged(CANARY, match=True)
    assert isinstance(parsed, Ingress) and len(parsed.rules) == 1


@pytest.mark.parametrize(("annotation", "note"), [("{not json", "not JSON"), ('["canary"]', "expected an object"),
                                                  ('{"canary": ["bad host!"]}', "invalid host")])
def test_an_invalid_tag_to_host_annotation_is_ignored_with_a_note(annotation: str, note: str) -> None:
    parsed = tagged(annotation)
    assert isinstance(parsed, Ingress) and len(parsed.rules) == 1
    assert any(note in n for n in parsed.notes), parsed.notes


def test_names_repeated_across_documents_are_one_string() -> None:
    """A revision's name appears in its Service, its EndpointSlice and up to three splits of its
    Ingress; a tag route's header match in every Ingress. Read from separate documents (as a watch
    decodes them), each is kept once: ~6 MiB at 10,000 Knative Services."""
    import json

    from bench.generate import ingress, revision_objects
    from kxds.model.ingress import Ingress
    from kxds.model.objects import Filters, parse_object
    from kxds.model.service import EndpointSlice, Service

    filters = Filters(ingress_class="kourier.ingress.networking.knative.dev", system_namespace="knative-serving")
    read = [parse_object(json.loads(json.dumps(d)), filters) for d in [ingress(1), ingress(2), *revision_objects(1, [8080])]]
    objects = [found[1] for found in read if found is not None]
    first, second = (o for o in objects if isinstance(o, Ingress))
    service = next(o for o in objects if isinstance(o, Service) and o.name == "svc1-00002")
    endpoints = next(o for o in objects if isinstance(o, EndpointSlice) and o.service_name == "svc1-00002")
    names = {id(split.service_name) for rule in first.rules for path in rule.paths for split in path.splits if split.service_name == "svc1-00002"}
    assert names == {id(service.name)} == {id(endpoints.service_name)}
    matches = [path.headers for ingress_ in (first, second) for rule in ingress_.rules for path in rule.paths if path.headers]
    assert len({id(name) for m in matches for name, _ in m}) == 1 and len({id(value) for m in matches for _, value in m}) == 1
