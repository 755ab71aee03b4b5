"""Hostile input, generated: the model and translator never crash, every rejection names a field,
and whatever kxds would serve for the valid documents is accepted by a real Envoy."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kxds.controller import build_world
from kxds.envoy_process import envoy_binary
from kxds.model.errors import InvalidObject
from kxds.model.ingress import HOP_BY_HOP, Ingress, RejectedIngress
from kxds.model.objects import Filters, parse_object
from kxds.model.config import Endpoint, ExtAuthzConfig
from kxds.resources import SCOPED_ROUTE
from kxds.model.world import World
from kxds.settings import DEFAULT_INGRESS_CLASS, ROUTE_LAYOUTS, SCOPED_LAYOUT, GatewaySettings
from kxds.translate import scopes
from kxds.translate.gateway import GatewayConfig, translate

FILTERS = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")
NS = "ns"

# Text that is sometimes fine and often not: DNS-ish names, unicode, control characters, huge.
anything = st.one_of(st.none(), st.integers(-5, 70000), st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
texts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=120),
    st.sampled_from(["", "*", "a b", "host:80", "Ünïcödé.example", "x\r\ny", "/", "/../..", "\x00"]),
)
header_names = st.one_of(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True), texts, st.sampled_from(["Host", ":path", "K-Network-Hash"]))
services = st.sampled_from(["a", "b", "c", "missing"])


@st.composite
def splits(draw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"serviceNamespace": draw(st.sampled_from([NS, NS, "other", ""])), "serviceName": draw(st.one_of(services, texts)),
                           "servicePort": draw(st.one_of(st.sampled_from([80, 81, "http", "http2"]), st.integers(-1, 70000), texts))}
    if draw(st.booleans()):
        out["percent"] = draw(st.one_of(st.integers(-10, 110), anything))
    if draw(st.booleans()):
        out["appendHeaders"] = draw(st.dictionaries(header_names, st.one_of(texts, anything), max_size=3))
    return out


@st.composite
def paths(draw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"splits": draw(st.lists(splits(), min_size=0, max_size=3))}
    for key, strategy in (("path", st.one_of(texts, st.just("/foo"))), ("rewriteHost", texts), ("timeout", st.one_of(texts, st.just("48h0m0s"))),
                          ("headers", st.dictionaries(header_names, st.one_of(st.fixed_dictionaries({"exact": texts}), anything), max_size=3)),
                          ("appendHeaders", st.dictionaries(header_names, st.one_of(texts, anything), max_size=3))):
        if draw(st.integers(0, 3)) == 0:
            out[key] = draw(strategy)
    return out


@st.composite
def ingresses(draw: Any, name: str) -> dict[str, Any]:
    rules = draw(st.lists(st.fixed_dictionaries(
        {"hosts": st.lists(texts, max_size=3), "http": st.fixed_dictionaries({"paths": st.lists(paths(), max_size=3)})},
        optional={"visibility": st.one_of(st.sampled_from(["ExternalIP", "ClusterLocal"]), texts)},
    ), max_size=3))
    spec: dict[str, Any] = {"rules": rules}
    if draw(st.booleans()):
        spec["httpOption"] = draw(st.one_of(st.sampled_from(["Enabled", "Redirected", ""]), texts))
    if draw(st.integers(0, 4)) == 0:
        spec["tls"] = draw(st.lists(st.fixed_dictionaries({"hosts": st.lists(texts, max_size=2), "secretName": texts, "secretNamespace": texts}), max_size=2))
    return {"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": NS, "annotations": {"networking.knative.dev/ingress.class": DEFAULT_INGRESS_CLASS}},
            "spec": draw(st.one_of(st.just(spec), st.just(spec), anything))}


@st.composite
def backends(draw: Any) -> list[dict[str, Any]]:
    out = []
    for name in ("a", "b", "c"):
        port = {"name": draw(st.sampled_from(["http", "http2", "", "h2c"])), "port": draw(st.sampled_from([80, 81])),
                "targetPort": draw(st.one_of(st.integers(1, 65535), st.just("user-port")))}
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS}, "spec": {"ports": [port]}})
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"{name}-1", "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
                    "addressType": draw(st.sampled_from(["IPv4", "IPv6", "FQDN"])),
                    "endpoints": [{"addresses": [draw(st.sampled_from(["10.0.0.1", "::1", "10.0.0.2"]))], "conditions": {"ready": draw(st.booleans())}}],
                    "ports": [{"name": port["name"], "port": draw(st.integers(1, 65535))}]})
    return out


# Valid by Knative's rules and kxds's checks, hostile in content: what Envoy must still accept.
# Host and the hop-by-hop headers are refused by kxds (they are tested at the limits below).
tokens = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,30}", fullmatch=True).filter(lambda n: n.lower() not in {"host", *HOP_BY_HOP})
values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40)
dns_hosts = st.from_regex(r"(\*\.)?[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?(\.[a-z0-9_]{1,10}){0,4}", fullmatch=True)


@st.composite
def partition(draw: Any, parts: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=parts - 1, max_size=parts - 1)))
    bounds = [0, *cuts, 100]
    return [b - a for a, b in zip(bounds, bounds[1:])]


@st.composite
def valid_paths(draw: Any) -> dict[str, Any]:
    count = draw(st.integers(1, 3))
    out: dict[str, Any] = {"splits": [
        {"serviceNamespace": NS, "serviceName": draw(st.sampled_from(["a", "b", "c"])), "servicePort": 80,
         "percent": percent, "appendHeaders": draw(st.dictionaries(tokens, values, max_size=2))}
        for percent in draw(partition(count))
    ]}
    if draw(st.booleans()):
        out["path"] = "/" + draw(values)
    if draw(st.booleans()):
        out["headers"] = draw(st.dictionaries(tokens, st.fixed_dictionaries({"exact": values}), max_size=3))
    if draw(st.booleans()):
        out["appendHeaders"] = draw(st.dictionaries(tokens, values, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        out["rewriteHost"] = draw(dns_hosts)
    if draw(st.integers(0, 4)) == 0:
        out["timeout"] = draw(st.sampled_from(["48h0m0s", "1.5s", "300ms", "0"]))
    return out


@st.composite
def valid_ingresses(draw: Any, name: str) -> dict[str, Any]:
    # Hosts are made unique per Ingress (a shared host is a conflict, tested elsewhere).
    unique_hosts = st.lists(dns_hosts.map(lambda h: f"{h}.{name}"), min_size=1, max_size=3).map(
        lambda hosts: [h + "." if i % 2 else h for i, h in enumerate(hosts)])
    rules = draw(st.lists(st.fixed_dictionaries({
        "hosts": unique_hosts, "visibility": st.sampled_from(["ExternalIP", "ClusterLocal"]),
        "http": st.fixed_dictionaries({"paths": st.lists(valid_paths(), min_size=1, max_size=4)}),
    }), min_size=1, max_size=3))
    return {"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": NS, "annotations": {"networking.knative.dev/ingress.class": DEFAULT_INGRESS_CLASS}},
            "spec": {"rules": rules, "httpOption": draw(st.sampled_from(["Enabled", "Redirected"]))}}


@st.composite
def sane_backends(draw: Any) -> list[dict[str, Any]]:
    out = []
    for name in ("a", "b", "c"):
        port_name = draw(st.sampled_from(["http", "http2"]))
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
                    "spec": {"ports": [{"name": port_name, "port": 80, "targetPort": 8080}]}})
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"{name}-1", "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.2"]}], "ports": [{"name": port_name, "port": 8080}]})
    return out


def parsed_world(docs: list[dict[str, Any]]) -> tuple[Any, list[RejectedIngress]]:
    objects, rejected = [], []
    for doc in docs:
        try:
            result = parse_object(doc, FILTERS)
        except InvalidObject as exc:
            assert exc.field or exc.problem, exc
            continue
        if result is None:
            continue
        if isinstance(result[1], RejectedIngress):
            rejected.append(result[1])
        else:
            objects.append(result[1])
    return build_world(objects), rejected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), backends())
def test_the_model_and_translator_never_crash(data: st.DataObject, backend_docs: list[dict[str, Any]]) -> None:
    docs = [data.draw(ingresses(f"i{n}")) for n in range(data.draw(st.integers(1, 6)))]
    world, rejected = parsed_world([*docs, *backend_docs])
    for bad in rejected:
        assert bad.error.field, f"rejection without a field: {bad.error}"
        assert str(bad.error).startswith(f"Ingress {NS}/")
    config = translate(world, GatewaySettings())
    assert set(config.outcomes) == {i.key for i in world.ingresses}
    for outcome in config.outcomes.values():
        assert "internal error" not in outcome.message, outcome.message


def assert_canonical(message: Message, data: bytes, where: str) -> None:
    """`data` is exactly the deterministic encoding of `message` (parsed from it), and so is every
    typed_config packed inside, however deep: versions hash these bytes, so equal inputs must give
    equal bytes in every process (map order included)."""
    assert message.SerializeToString(deterministic=True) == data, f"{where}: not in canonical form"
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = value.values() if field.message_type.GetOptions().map_entry else value if field.is_repeated else [value]
        for item in items:
            if not isinstance(item, Message):
                continue
            if item.DESCRIPTOR.full_name == "google.protobuf.Any":
                inner = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(item.TypeName()))()
                inner.ParseFromString(item.value)
                assert_canonical(inner, item.value, f"{where} > {field.name} ({item.TypeName()})")
            else:
                assert_canonical(item, item.SerializeToString(deterministic=True), f"{where} > {field.name}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), sane_backends(), st.sampled_from(ROUTE_LAYOUTS))
def test_every_served_resource_is_canonically_encoded(data: st.DataObject, backend_docs: list[dict[str, Any]], layout: str) -> None:
    # Routes are assembled from the bytes of their parts, and ext-authz packs the Ingress's labels (a map).
    docs = [data.draw(valid_ingresses(f"i{n}")) for n in range(3)]
    for doc in docs:
        doc["metadata"]["labels"] = data.draw(st.dictionaries(tokens, values, max_size=6))
    world, _ = parsed_world([*docs, *backend_docs])
    authz = ExtAuthzConfig(endpoint=Endpoint(host="authz", port=9000))
    config = translate(world, GatewaySettings(route_layout=layout, ext_authz=authz, http_option_disabled=data.draw(st.booleans())))
    for type_url, resources in config.encoded.items():
        message_class = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[1]))
        for resource in resources:
            assert_canonical(message_class.FromString(resource.data), resource.data, resource.name)


def static_bootstrap(config: GatewayConfig) -> dict[str, Any]:
    """The served configuration as one static bootstrap Envoy can validate offline: RDS inlined
    into each listener, EDS clusters made STATIC with their load assignments."""
    routes = {r.name: r for r in config.route_configs}
    assignments = {a.cluster_name: a for a in config.load_assignments}
    scoped = [scoped_route_pb2.ScopedRouteConfiguration.FromString(e.data) for e in config.encoded.get(SCOPED_ROUTE, ())]
    boot = bootstrap_pb2.Bootstrap()
    for listener in config.listeners:
        static = boot.static_resources.listeners.add()
        static.CopyFrom(listener)
        for chain in static.filter_chains:
            for network_filter in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                if manager.HasField("scoped_routes"):  # the scoped layout: every scope, its routes inline
                    inline = manager.scoped_routes.scoped_route_configurations_list.scoped_route_configurations
                    for scope in scoped:
                        copy = inline.add(name=scope.name, key=scope.key)
                        copy.route_configuration.CopyFrom(routes[scope.route_configuration_name])
                    manager.scoped_routes.ClearField("rds_config_source")
                else:
                    manager.route_config.CopyFrom(routes[manager.rds.route_config_name])
                network_filter.typed_config.Pack(manager)
    for cluster in config.clusters:
        static_cluster = boot.static_resources.clusters.add()
        static_cluster.CopyFrom(cluster)
        if cluster.HasField("eds_cluster_config"):
            static_cluster.ClearField("eds_cluster_config")
            static_cluster.type = cluster_pb2.Cluster.STATIC
            static_cluster.load_assignment.CopyFrom(assignments[cluster.name])
    for name in ("service_stats",):  # the static cluster of the real bootstrap the status route uses
        stats = boot.static_resources.clusters.add(name=name, type=cluster_pb2.Cluster.STATIC)
        stats.connect_timeout.FromMilliseconds(250)
    return json_format.MessageToDict(boot)


def unscopable(world: World, layout: str) -> list[Ingress]:
    """The Ingresses the scoped layout refuses: a wildcard host, or a rule without hosts."""
    if layout != SCOPED_LAYOUT:
        return []
    return [i for i in world.ingresses if any(not r.hosts or any(scopes.unscopable(h) for h in r.hosts) for r in i.rules)]


def envoy_validate(config: GatewayConfig) -> subprocess.CompletedProcess[str]:
    """A real `envoy --mode validate` of the served configuration (see static_bootstrap)."""
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "served.json"
        path.write_text(json.dumps(static_bootstrap(config)))
        return subprocess.run([envoy_binary(), "--mode", "validate", "--config-path", str(path)], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.e2e
@pytest.mark.timeout(300)  # six real `envoy --mode validate` runs and their generation: ~70-100 s on this 2-core machine
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), sane_backends(), st.sampled_from(ROUTE_LAYOUTS))
def test_envoy_accepts_everything_kxds_would_serve(data: st.DataObject, backend_docs: list[dict[str, Any]], layout: str) -> None:
    # Several Ingresses per example: envoy --mode validate costs about a second per run.
    docs = [data.draw(valid_ingresses(f"i{n}")) for n in range(12)]
    world, rejected = parsed_world([*docs, *backend_docs])
    assert not rejected, [str(r.error) for r in rejected]
    config = translate(world, GatewaySettings(listen_address="127.0.0.1", route_layout=layout))
    result = envoy_validate(config)
    served = [k for k, o in config.outcomes.items() if o.programmed]
    # Valid, distinct hosts, existing backends: all served (the scoped layout refuses wildcard hosts).
    assert len(served) == len(docs) - len(unscopable(world, layout)), config.outcomes
    assert result.returncode == 0, f"Envoy rejected the configuration for {served}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    assert all(isinstance(i, Ingress) for i in world.ingresses)


# Shapes at and beyond Envoy's limits: kxds must either refuse them naming the field, or serve
# what Envoy accepts.
HOP_BY_HOP_NAMES = ["Connection", "keep-alive", "Proxy-Connection", "TE", "Transfer-Encoding", "Upgrade"]
edge_values = st.sampled_from([16383, 16384, 16385, 20000]).map(lambda n: "v" * n)
edge_names = st.one_of(st.sampled_from(HOP_BY_HOP_NAMES), st.sampled_from([16384, 16385]).map(lambda n: "X" * n))
edge_timeouts = st.sampled_from(["9223372035s", "9223372036s", "2562047h", "100000000h", "1ns", "0.5ms"])
edge_paths = st.sampled_from(["api", "/" + "p" * 16383, "/" + "p" * 16384, "/a\x01b", "/\x7f"])


@st.composite
def edge_ingresses(draw: Any, name: str) -> dict[str, Any]:
    doc = draw(valid_ingresses(name))
    path = doc["spec"]["rules"][0]["http"]["paths"][0]
    split = path["splits"][0]
    for _ in range(draw(st.integers(1, 2))):
        match draw(st.sampled_from(["value", "split value", "name", "count", "split count", "timeout", "path", "match"])):
            case "value":
                path["appendHeaders"] = {"X-Long": draw(edge_values)}
            case "split value":
                split["appendHeaders"] = {"X-Split": draw(edge_values)}
            case "name":
                path["appendHeaders"] = {draw(edge_names): "v"}
            case "count":
                path["appendHeaders"] = {f"X-{n}": "v" for n in range(draw(st.sampled_from([998, 999, 1000, 1001])))}
            case "split count":
                split["appendHeaders"] = {f"X-{n}": "v" for n in range(draw(st.sampled_from([999, 1000, 1001])))}
            case "timeout":
                path["timeout"] = draw(edge_timeouts)
            case "path":
                path["path"] = draw(edge_paths)
            case "match":
                path["headers"] = {"X-Match": {"exact": draw(edge_values)}}
    return doc


@pytest.mark.e2e
@pytest.mark.timeout(300)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), sane_backends(), st.sampled_from(ROUTE_LAYOUTS))
def test_envoy_accepts_whatever_kxds_serves_at_and_beyond_its_limits(data: st.DataObject, backend_docs: list[dict[str, Any]], layout: str) -> None:
    docs = [data.draw(edge_ingresses(f"e{n}")) for n in range(8)]
    world, rejected = parsed_world([*docs, *backend_docs])
    for bad in rejected:
        assert bad.error.field.startswith("spec.rules[0].http.paths[0]"), bad.error
        assert any(word in bad.error.problem for word in ("Envoy", "hop-by-hop", "control characters", "must start with")), bad.error
    config = translate(world, GatewaySettings(listen_address="127.0.0.1", route_layout=layout))
    served = [k for k, o in config.outcomes.items() if o.programmed]
    assert len(served) + len(rejected) + len(unscopable(world, layout)) == len(docs), config.outcomes
    result = envoy_validate(config)
    assert result.returncode == 0, f"Envoy rejected the configuration for {served}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
