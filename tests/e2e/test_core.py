"""End to end: kxds serving a real Envoy, real backends, real curl."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from kxds.model.ingress import parse_ingress
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.conftest import Stack
from tests.e2e.harness import Gateway, curl, curl_many, wait_until

pytestmark = pytest.mark.e2e
NS = "e2e"


def backend(stack: Stack, name: str, port_name: str = "http") -> list[dict[str, Any]]:
    """Start an echo server and describe it as a Service (port 80) with a ready EndpointSlice."""
    port = stack.backends.start(name)
    return [service(name, NS, port_name=port_name, target=port), endpoint_slice(name, ["127.0.0.1"], port, NS, port_name)]


def publish(stack: Stack, filename: str, doc: dict[str, Any], *others: dict[str, Any]) -> str:
    """Write an Ingress (and its backends) and wait until every gateway serves its current hash."""
    stack.plane.write(filename, [*others, doc])
    digest = parse_ingress(doc).hash
    stack.plane.wait_ready(f"{NS}/{doc['metadata']['name']}", digest)
    return digest


def test_basics(stack: Stack) -> None:
    doc = ingress("basics", rule(["basics.example.com"], path(split("basics", namespace=NS))), namespace=NS)
    publish(stack, "basics.yaml", doc, *backend(stack, "basics"))
    reply = curl(stack.ports.external, "basics.example.com")
    assert reply.status == 200
    assert reply.json()["request"]["host"] == "basics.example.com"
    assert reply.json()["server"]["name"] == "basics"


def test_multiple_hosts_and_an_authority_with_port(stack: Stack) -> None:
    hosts = ["mh.foo.com", "mh.www.foo.com", "mh.a-b-1.something-really-really-long.knative.dev", "mh.add.your.interesting.domain.here.io"]
    doc = ingress("multi", rule(hosts, path(split("multi", namespace=NS))), namespace=NS)
    publish(stack, "multi.yaml", doc, *backend(stack, "multi"))
    for host in hosts:
        assert curl(stack.ports.external, host).status == 200
    with_port = curl(stack.ports.external, "mh.foo.com", headers=["Host: mh.foo.com:80"])
    assert with_port.status == 200 and with_port.json()["request"]["host"] == "mh.foo.com:80"


def test_path_dispatch(stack: Stack) -> None:
    docs = [d for n in ("pfoo", "pbar", "pbaz", "pmain") for d in backend(stack, n)]
    paths = [path(split(n, namespace=NS, **{"Which-Backend": n}), prefix=p) for n, p in (("pfoo", "/foo"), ("pbar", "/bar"), ("pbaz", "/baz"))]
    doc = ingress("paths", rule(["paths.example.com"], *paths, path(split("pmain", namespace=NS, **{"Which-Backend": "pmain"}))), namespace=NS)
    publish(stack, "paths.yaml", doc, *docs)
    for request_path, expected in (("/foo", "pfoo"), ("/bar", "pbar"), ("/baz", "pbaz"), ("/", "pmain"), ("/asdf", "pmain"), ("/foo/x", "pfoo")):
        assert curl(stack.ports.external, "paths.example.com", request_path).request_header("Which-Backend") == expected, request_path


def test_header_dispatch_for_tags(stack: Stack) -> None:
    tagged = path(split("tags", namespace=NS), headers={"Knative-Serving-Tag": "the-tag"}, append={"Which-Backend": "tag"})
    doc = ingress("tags", rule(["tags.example.com"], tagged, path(split("tags", namespace=NS), append={"Which-Backend": "no-tag"})), namespace=NS)
    publish(stack, "tags.yaml", doc, *backend(stack, "tags"))
    cases = {"Knative-Serving-Tag: the-tag": "tag", "Knative-Serving-Tag;": "no-tag", "Knative-Serving-Tag: not-the-tag": "no-tag", "X-Other: 1": "no-tag"}
    for header, expected in cases.items():
        assert curl(stack.ports.external, "tags.example.com", headers=[header]).request_header("Which-Backend") == expected, header


def test_pre_and_post_split_headers_overwrite_the_client_value(stack: Stack) -> None:
    doc = ingress(
        "hdrs",
        rule(["hdrs.example.com"], path(split("hdrs", namespace=NS, **{"Post-Split": "post"}), append={"Pre-Split": "pre"})),
        namespace=NS,
    )
    publish(stack, "hdrs.yaml", doc, *backend(stack, "hdrs"))
    for client in ([], ["Pre-Split: bogus", "Post-Split: bogus"]):
        reply = curl(stack.ports.external, "hdrs.example.com", headers=client).json()["request"]["headers"]
        assert reply["Pre-Split"] == ["pre"] and reply["Post-Split"] == ["post"], client


def test_percentage_split_and_zero_weights(stack: Stack) -> None:
    weights = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0]
    names = [f"pct{i}" for i in range(len(weights))]
    docs = [d for n in names for d in backend(stack, n)]
    splits = [split(n, w, namespace=NS, **{"Foo-Bar-Baz": n}) for n, w in zip(names, weights)]
    publish(stack, "pct.yaml", ingress("pct", rule(["pct.example.com"], path(*splits)), namespace=NS), *docs)
    before = {n: stack.backends.hits[n] for n in names}
    replies = curl_many(stack.ports.external, "pct.example.com", 1000)
    assert len(replies) == 1000 and {status for status, _ in replies} == {200}
    seen = Counter(json.loads(body)["request"]["headers"]["Foo-Bar-Baz"][0] for _, body in replies)
    for name, weight in zip(names, weights):
        share = seen[name] / 10  # percentage points
        assert abs(share - weight) <= 10, (name, weight, share)
        if weight == 0:
            assert seen[name] == 0 and stack.backends.hits[name] == before[name], name


def test_visibility_cluster_local(stack: Stack) -> None:
    hosts = ["vis.e2e", "vis.e2e.svc", "vis.e2e.svc.cluster.local"]
    doc = ingress("vis", rule(hosts, path(split("vis", namespace=NS)), visibility="ClusterLocal"), namespace=NS)
    publish(stack, "vis.yaml", doc, *backend(stack, "vis"))
    for host in hosts:
        assert curl(stack.ports.external, host).status == 404, host
        assert curl(stack.ports.probe, host).status == 404, host
        internal = curl(stack.ports.internal, host)
        assert internal.status == 200 and internal.json()["request"]["host"] == host


def test_http_option_redirected(stack: Stack) -> None:
    doc = ingress("redir", rule(["redir.example.com"], path(split("redir", namespace=NS))), namespace=NS, httpOption="Redirected")
    publish(stack, "redir.yaml", doc, *backend(stack, "redir"))
    for port in (stack.ports.external, stack.ports.internal):
        reply = curl(port, "redir.example.com", "/some/path?q=1")
        assert reply.status == 301
        assert reply.headers["location"] == "https://redir.example.com/some/path?q=1"


def test_h2c_upstream_when_the_port_is_named_http2(stack: Stack) -> None:
    doc = ingress("h2c", rule(["h2c.example.com"], path(split("h2c", namespace=NS))), namespace=NS)
    publish(stack, "h2c.yaml", doc, *backend(stack, "h2c", port_name="http2"))
    reply = curl(stack.ports.external, "h2c.example.com")
    assert reply.status == 200 and reply.json()["request"]["protoMajor"] == 2


def test_probe_hash_is_echoed(stack: Stack) -> None:
    doc = ingress("probe", rule(["probe.example.com"], path(split("probe", namespace=NS))), namespace=NS, httpOption="Enabled")
    digest = publish(stack, "probe.yaml", doc, *backend(stack, "probe"))
    for port in (stack.ports.external, stack.ports.probe, stack.ports.internal):
        reply = curl(port, "probe.example.com", headers=["K-Network-Probe: probe", "K-Network-Hash: override"])
        assert reply.status == 200 and reply.headers["k-network-hash"] == digest
    other = "2701a1b241db6af811992c57a5e11171847148ac3d2e1a8cc992a62f9e4fa111"
    reply = curl(stack.ports.external, "probe.example.com", headers=["K-Network-Probe: probe", f"K-Network-Hash: {other}"])
    assert reply.headers["k-network-hash"] == other


def test_ingress_of_another_class_is_ignored(stack: Stack) -> None:
    ours = ingress("mine", rule(["mine.example.com"], path(split("classy", namespace=NS))), namespace=NS)
    theirs = [
        ingress(f"theirs{i}", rule([f"theirs{i}.example.com"], path(split("classy", namespace=NS))), namespace=NS, ingress_class=cls)
        for i, cls in enumerate([None, "", "istio.ingress.networking.knative.dev"])
    ]
    theirs[0]["metadata"]["annotations"] = {}
    stack.plane.write("theirs.yaml", theirs)
    publish(stack, "mine.yaml", ours, *backend(stack, "classy"))
    assert not {f"{NS}/theirs{i}" for i in range(3)} & stack.plane.ingresses().keys()
    for i in range(3):
        assert curl(stack.ports.external, f"theirs{i}.example.com").status == 404


def test_invalid_ingress_is_reported_and_does_not_disturb_a_valid_one(stack: Stack) -> None:
    bad = ingress("bad", rule(["bad.example.com"], path(split("valid", 60, namespace=NS), split("valid", 30, namespace=NS))), namespace=NS)
    good = ingress("good", rule(["good.example.com"], path(split("valid", namespace=NS))), namespace=NS)
    stack.plane.write("bad.yaml", [bad])
    publish(stack, "good.yaml", good, *backend(stack, "valid"))
    status = stack.plane.wait_status(f"{NS}/bad", lambda e: e["reason"] == "ReconcileIngressFailed")
    assert not status["ready"]
    assert "Ingress e2e/bad: spec.rules[0].http.paths[0].splits: the percentages must add up to 100, got 90" == status["message"]
    assert curl(stack.ports.external, "good.example.com").status == 200
    assert curl(stack.ports.external, "bad.example.com").status == 404
    # A file that does not parse at all keeps its last good objects.
    (stack.plane.source / "good.yaml").write_text("apiVersion: [unclosed\n")
    time.sleep(0.5)
    assert stack.plane.ingresses()[f"{NS}/good"]["ready"]
    assert curl(stack.ports.external, "good.example.com").status == 200


def test_update_with_two_gateways_never_fails_a_request(stack: Stack) -> None:
    """Conformance `update`: 10 spec changes, then 10 backend swaps with the old one stopped."""
    second = Gateway(stack.workdir, stack.plane, name="gw-update")  # same listener ports: SO_REUSEPORT
    try:
        wait_until(lambda: len(stack.plane.gateways()) == 2 and all(g["synced"] for g in stack.plane.gateways()), what="two synced gateways")
        host, key = "update.example.com", f"{NS}/update"

        def spec(backend_name: str, sentinel: str) -> dict[str, Any]:
            return ingress("update", rule([host], path(split(backend_name, namespace=NS, **{"Who-Are-You": sentinel}))), namespace=NS)

        current = "upd0"
        services = backend(stack, current)
        publish(stack, "update.yaml", spec(current, "first"), *services)
        failures: list[str] = []
        sent = [0]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():  # short-lived curl processes: new connections land on both gateways
                for status, body in curl_many(stack.ports.external, host, 10, parallel=1):
                    sent[0] += 1
                    if status != 200:
                        failures.append(f"{status} {body[:200]!r}")

        loader = threading.Thread(target=load)
        loader.start()
        try:
            for i in range(10):
                digest = publish(stack, "update.yaml", spec(current, f"spec-{i}"), *services)
                assert curl(stack.ports.external, host).request_header("Who-Are-You") == f"spec-{i}"
                assert stack.plane.ingresses()[key]["hash"] == digest
            for i in range(1, 11):
                previous, current = current, f"upd{i}"
                services = backend(stack, current)
                publish(stack, "update.yaml", spec(current, f"swap-{i}"), *services)
                reply = curl(stack.ports.external, host)
                assert (reply.request_header("Who-Are-You"), reply.json()["server"]["name"]) == (f"swap-{i}", current)
                stack.backends.stop(previous)
        finally:
            stop.set()
            loader.join()
        assert sent[0] > 100, f"the load loop sent only {sent[0]} requests"
        assert failures == []
        for gateway in (stack.gateway, second):
            assert gateway.stat("http.ingress_http.rds.external_services.update_rejected") == 0
            assert gateway.stat("cluster_manager.cds.update_rejected") == 0
    finally:
        second.stop()
    stack.plane.wait_status("e2e/update", lambda e: e["ready"])  # one gateway left, still served
