"""End to end beyond the conformance cases (tests/conformance covers those): kxds, a real Envoy, curl."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kxds.model.ingress import parse_ingress
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import curl, wait_until

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


def test_multiple_hosts_and_an_authority_with_port(stack: Stack) -> None:
    hosts = ["mh.foo.com", "mh.www.foo.com", "mh.a-b-1.something-really-really-long.knative.dev", "mh.add.your.interesting.domain.here.io"]
    doc = ingress("multi", rule(hosts, path(split("multi", namespace=NS))), namespace=NS)
    publish(stack, "multi.yaml", doc, *backend(stack, "multi"))
    for host in hosts:
        assert curl(stack.ports.external, host).status == 200
    with_port = curl(stack.ports.external, "mh.foo.com", headers=["Host: mh.foo.com:80"])
    assert with_port.status == 200 and with_port.json()["request"]["host"] == "mh.foo.com:80"


def test_http_option_redirected(stack: Stack) -> None:
    doc = ingress("redir", rule(["redir.example.com"], path(split("redir", namespace=NS))), namespace=NS, httpOption="Redirected")
    publish(stack, "redir.yaml", doc, *backend(stack, "redir"))
    for port in (stack.ports.external, stack.ports.internal):
        reply = curl(port, "redir.example.com", "/some/path?q=1")
        assert reply.status == 301
        assert reply.headers["location"] == "https://redir.example.com/some/path?q=1"


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




def test_percent_signs_in_added_headers_arrive_literally(stack: Stack) -> None:
    # Envoy treats % in added header values as formatter syntax; kxds must escape it (found by
    # the hostile-input property test: one such value made Envoy reject every route).
    literal = "100% sure, not %REQ(:path)% and %%"
    doc = ingress("pct-lit", rule(["pct-lit.example.com"], path(split("pctlit", namespace=NS, Literal=literal))), namespace=NS)
    publish(stack, "pct-lit.yaml", doc, *backend(stack, "pctlit"))
    assert curl(stack.ports.external, "pct-lit.example.com").request_header("Literal") == literal


def test_convergence_is_measured_from_change_to_every_gateways_ack(stack: Stack) -> None:
    def observations() -> float:
        text = stack.plane.get("/metrics")[1].decode()
        line = next(line for line in text.splitlines() if line.startswith("kxds_convergence_seconds_count"))
        return float(line.split()[-1])

    before = observations()
    doc = ingress("conv", rule(["conv.example.com"], path(split("conv", namespace=NS))), namespace=NS)
    publish(stack, "conv.yaml", doc, *backend(stack, "conv"))
    wait_until(lambda: observations() > before, what="a convergence observation")
    text = stack.plane.get("/metrics")[1].decode()
    assert 'kxds_convergence_seconds_bucket{le="60.0"}' in text


def test_tag_to_host_routes_a_tag_host_through_envoy(stack: Stack) -> None:
    """Knative's tag-to-host annotation: a path that appends the tag header without matching on it
    is also served on the tag's hosts (external ones on the external listener, local ones with
    their short forms on the internal one)."""
    tag_path = path(split("tag-canary", namespace=NS), prefix="/canary", append={"Knative-Serving-Tag": "canary"})
    doc = ingress("tagged", rule(["tagged.example.com"], tag_path, path(split("tag-main", namespace=NS))),
                  rule(["tagged.e2e.svc.cluster.local"], tag_path, visibility="ClusterLocal"), namespace=NS)
    doc["metadata"]["annotations"]["networking.internal.knative.dev/tag-to-host"] = (
        '{"canary": ["canary-tagged.example.com", "canary-tagged.e2e.svc.cluster.local"]}')
    publish(stack, "tagged.yaml", doc, *backend(stack, "tag-canary"), *backend(stack, "tag-main"))
    assert curl(stack.ports.external, "tagged.example.com").json()["server"]["name"] == "tag-main"
    reply = curl(stack.ports.external, "canary-tagged.example.com", "/canary")
    assert reply.status == 200 and reply.json()["server"]["name"] == "tag-canary"
    assert reply.request_header("Knative-Serving-Tag") == "canary"
    assert curl(stack.ports.external, "canary-tagged.example.com", "/other").status == 404  # only the tag's path
    for local in ("canary-tagged.e2e.svc.cluster.local", "canary-tagged.e2e.svc", "canary-tagged.e2e"):
        assert curl(stack.ports.internal, local, "/canary").json()["server"]["name"] == "tag-canary", local
    assert curl(stack.ports.external, "canary-tagged.e2e.svc.cluster.local", "/canary").status == 404  # local stays local
