"""Knative's ingress conformance suite, case by case (conformance-cases.md Part B), against kxds,
a real Envoy, real backends and real clients (curl, grpcio, aiohttp's WebSocket client)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import grpc
import pytest

from kxds.model.ingress import parse_ingress
from tests.conformance import backends as images
from tests.conformance.suite import (
    NS,
    create_backend,
    create_ingress_ready,
    delete_backend,
    external_name_service,
    http_path,
    ingress_object,
    ingress_rule,
    split,
    unique,
    update_ingress,
)
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, Gateway, Reply, Traffic, curl, curl_many, wait_until

pytestmark = pytest.mark.e2e
case = pytest.mark.case
OTHER_HASH = "2701a1b241db6af811992c57a5e11171847148ac3d2e1a8cc992a62f9e4fa111"
PERCENTAGES = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0]


def basic_ingress(stack: Stack, name: str, app: images.Factory = images.runtime, **backend: Any) -> tuple[str, dict[str, Any]]:
    """One backend, one rule for `<name>.example.com`, one path with one split (percent defaulted)."""
    target = create_backend(stack, name, app, **backend)
    host = f"{name}.example.com"
    ingress = ingress_object(name, ingress_rule([host], http_path(split(target))))
    create_ingress_ready(stack, ingress)
    return host, ingress


def header(reply: Reply, name: str) -> str | None:
    assert reply.status == 200, reply
    return reply.request_header(name)


def shares(replies: list[tuple[int, bytes]], header_name: str) -> Counter[str]:
    assert {status for status, _ in replies} == {200}, Counter(status for status, _ in replies)
    return Counter(json.loads(body)["request"]["headers"][header_name][0] for _, body in replies)


def assert_percentages(seen: Counter[str], names: list[str], weights: list[int], stack: Stack, hits_before: dict[str, int]) -> None:
    for name, weight in zip(names, weights):
        assert abs(seen[name] / 10 - weight) <= 10, (name, weight, seen[name])
        if weight == 0:
            assert seen[name] == 0 and stack.backends.hits[name] == hits_before[name], name


def percentage_backends(stack: Stack, prefix: str) -> tuple[list[str], list[dict[str, Any]]]:
    names = [f"{prefix}-{i}" for i in range(len(PERCENTAGES))]
    splits = [split(create_backend(stack, n), w, **{"Foo-Bar-Baz": n}) for n, w in zip(names, PERCENTAGES)]
    return names, splits


def private_host(name: str, form: int = 0) -> str:
    return [f"{name}.{NS}.svc.cluster.local", f"{name}.{NS}.svc", f"{name}.{NS}"][form]


def public_proxy(stack: Stack, name: str, target_host: str, domain: str = "example.com") -> str:
    """An httpproxy to the internal gateway with Host rewritten, published on a public host."""
    proxy = create_backend(stack, name, images.httpproxy(target_host, f"{LOCAL}:{stack.ports.internal}"), port_name=None)
    host = f"{name}.{domain}"
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], http_path(split(proxy)))))
    return host


@case("basics")
def test_basics(stack: Stack) -> None:
    host, _ = basic_ingress(stack, unique("basics"))
    reply = curl(stack.ports.external, host)
    assert reply.status == 200 and reply.json()["request"]["host"] == host


@case("basics/http2")
def test_basics_http2(stack: Stack) -> None:
    host, _ = basic_ingress(stack, unique("basics-http2"), port_name="http2", app_protocol="kubernetes.io/h2c")
    assert curl(stack.ports.external, host).json()["request"]["protoMajor"] == 2


def grpc_channel(stack: Stack, host: str) -> grpc.aio.Channel:
    # Cleartext HTTP/2 with prior knowledge to the gateway; `:authority` carries the port.
    return grpc.aio.insecure_channel(f"{LOCAL}:{stack.ports.external}", options=[("grpc.default_authority", f"{host}:80")])


def ping_stream(channel: grpc.aio.Channel) -> Any:
    method = channel.stream_stream("/ping.PingService/PingStream", request_serializer=images.encode_ping, response_deserializer=images.decode_ping)
    return method(timeout=60)


@case("grpc")
async def test_grpc(stack: Stack) -> None:
    name = unique("grpc")
    host, _ = await asyncio.to_thread(basic_ingress, stack, name, images.grpc_ping("- pong"), port_name="http2", app_protocol="kubernetes.io/h2c")
    async with grpc_channel(stack, host) as channel:
        unary = channel.unary_unary("/ping.PingService/Ping", request_serializer=images.encode_ping, response_deserializer=images.decode_ping)
        assert await unary("ping -unary", timeout=10) == "ping -unary- pong"
        stream = ping_stream(channel)
        for i in range(100):
            await stream.write(f"ping -{i}")
            assert await stream.read() == f"ping -{i}- pong"
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK


@case("grpc/split")
async def test_grpc_split(stack: Stack) -> None:
    name = unique("grpc-split")
    blue = create_backend(stack, f"{name}-blue", images.grpc_ping("- blue"), port_name="http2", app_protocol="kubernetes.io/h2c")
    green = create_backend(stack, f"{name}-green", images.grpc_ping("- green"), port_name="http2", app_protocol="kubernetes.io/h2c")
    host = f"{name}.example.com"
    await asyncio.to_thread(create_ingress_ready, stack, ingress_object(name, ingress_rule([host], http_path(split(blue, 50), split(green, 50)))))
    seen: set[str] = set()
    async with grpc_channel(stack, host) as channel:
        for n in range(100):
            stream = ping_stream(channel)
            await stream.write(f"ping -{n}")
            reply = await stream.read()
            assert reply.startswith(f"ping -{n}")
            suffix = reply[len(f"ping -{n}") :].strip()
            for i in range(10):  # a stream stays with the backend that took it
                await stream.write(f"ping -{n}-{i}")
                assert (await stream.read()).endswith(suffix)
            await stream.done_writing()
            seen.add(suffix)
            if seen == {"- blue", "- green"}:
                break
    assert seen == {"- blue", "- green"}


@case("headers/pre-split")
def test_headers_pre_split(stack: Stack) -> None:
    name = unique("pre-split")
    target = create_backend(stack, name)
    host = f"{name}.example.com"
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], http_path(split(target), append={"Foo-Bar-Baz": name}))))
    assert header(curl(stack.ports.external, host), "Foo-Bar-Baz") == name
    assert header(curl(stack.ports.external, host, headers=["Foo-Bar-Baz: bogus"]), "Foo-Bar-Baz") == name


@case("headers/post-split")
def test_headers_post_split(stack: Stack) -> None:
    name = unique("post-split")
    names = [f"{name}-{i}" for i in range(4)]
    splits = [split(create_backend(stack, n), 25, **{"Foo-Bar-Baz": n}) for n in names]
    host = f"{name}.example.com"
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], http_path(*splits))))
    for client_headers in ([], ["Foo-Bar-Baz: bogus"]):
        seen: set[str | None] = set()
        for _ in range(100):
            seen.add(header(curl(stack.ports.external, host, headers=client_headers), "Foo-Bar-Baz"))
            if seen == set(names):
                break
        assert seen == set(names), client_headers


@case("headers/probe")
def test_headers_probe(stack: Stack) -> None:
    host, ingress = basic_ingress(stack, unique("probe"))
    # Recomputed from the stored object, as the suite does, and compared with what the gateway injects.
    stored = parse_ingress(ingress).hash
    with ThreadPoolExecutor(2) as pool:
        override = pool.submit(curl, stack.ports.external, host, "/", ["K-Network-Probe: probe", "K-Network-Hash: override"])
        other = pool.submit(curl, stack.ports.external, host, "/", ["K-Network-Probe: probe", f"K-Network-Hash: {OTHER_HASH}"])
    assert (override.result().status, override.result().headers["k-network-hash"]) == (200, stored)
    assert (other.result().status, other.result().headers["k-network-hash"]) == (200, OTHER_HASH)


@case("hosts/multiple")
def test_hosts_multiple(stack: Stack) -> None:
    name = unique("multiple")
    target = create_backend(stack, name)
    hosts = [f"{name}.foo.com", f"{name}.www.foo.com", f"{name}.a-b-1.something-really-really-long.knative.dev", f"{name}.add.your.interesting.domain.here.io"]
    create_ingress_ready(stack, ingress_object(name, ingress_rule(hosts, http_path(split(target)))))
    for host in hosts:
        reply = curl(stack.ports.external, host)
        assert reply.status == 200 and reply.json()["request"]["host"] == host


def path_backends(stack: Stack, name: str) -> list[dict[str, Any]]:
    """The four paths of case 9: /foo, /bar, /baz and a catch-all, each tagging `Which-Backend`."""
    paths = []
    for suffix, prefix in (("foo", "/foo"), ("bar", "/bar"), ("baz", "/baz"), ("main", "")):
        backend = create_backend(stack, f"{name}-{suffix}")
        paths.append(http_path(split(backend, **{"Which-Backend": backend[0]}), prefix=prefix))
    return paths


def assert_path_dispatch(port: int, host: str, name: str) -> None:
    expected = {"/foo": "foo", "/bar": "bar", "/baz": "baz", "": "main", "/asdf": "main"}
    with ThreadPoolExecutor(len(expected)) as pool:
        replies = {p: pool.submit(curl, port, host, p or "/") for p in expected}
    for request_path, suffix in expected.items():
        assert header(replies[request_path].result(), "Which-Backend") == f"{name}-{suffix}", request_path


@case("dispatch/path")
def test_dispatch_path(stack: Stack) -> None:
    name = unique("path")
    host = f"{name}-main.example.com"
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], *path_backends(stack, name))))
    assert_path_dispatch(stack.ports.external, host, name)


@case("dispatch/percentage")
def test_dispatch_percentage(stack: Stack) -> None:
    name = unique("percentage")
    names, splits = percentage_backends(stack, name)
    host = f"{name}.example.com"
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], http_path(*splits))))
    before = {n: stack.backends.hits[n] for n in names}
    assert_percentages(shares(curl_many(stack.ports.external, host, 1000), "Foo-Bar-Baz"), names, PERCENTAGES, stack, before)


@case("dispatch/path_and_percentage")
def test_dispatch_path_and_percentage(stack: Stack) -> None:
    name = unique("path-pct")
    foo, bar, main = (create_backend(stack, f"{name}-{s}") for s in ("foo", "bar", "main"))
    host = f"{name}-main.example.com"
    paths = [
        http_path(split(foo, 50, **{"Which-Backend": foo[0]}), split(bar, 50, **{"Which-Backend": bar[0]}), prefix="/foo"),
        http_path(split(main, **{"Which-Backend": main[0]})),
    ]
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], *paths)))
    seen = shares(curl_many(stack.ports.external, host, 1000, path="/foo"), "Which-Backend")
    assert set(seen) == {foo[0], bar[0]}
    assert all(abs(seen[b[0]] - 500) <= 150 for b in (foo, bar)), seen


@case("dispatch/rule")
def test_dispatch_rule(stack: Stack) -> None:
    name = unique("rule")
    foo, bar = create_backend(stack, f"{name}-foo"), create_backend(stack, f"{name}-bar")
    rules = [ingress_rule([f"{b[0]}.example.com"], http_path(split(b), append={"Foo-Bar-Baz": b[0]})) for b in (foo, bar)]
    create_ingress_ready(stack, ingress_object(name, *rules))
    for backend in (foo, bar):
        assert header(curl(stack.ports.external, f"{backend[0]}.example.com"), "Foo-Bar-Baz") == backend[0]


@case("retry")
def test_retry(stack: Stack) -> None:
    host, _ = basic_ingress(stack, unique("retry"), images.retry, port_name="http2")
    # No retry policy and nothing else consuming the first response: the 503 reaches the client.
    assert curl(stack.ports.external, host).status == 503
    assert curl(stack.ports.external, host).status == 200


@case("timeout")
def test_timeout(stack: Stack) -> None:
    host, _ = basic_ingress(stack, unique("timeout"), images.timeout)
    cases = {"none": (0, 0), "before headers": (10_000, 0), "before body": (0, 10_000)}

    def timed(initial: int, after: int) -> tuple[int, float]:
        started = time.monotonic()
        reply = curl(stack.ports.external, host, f"/?initialTimeout={initial}&timeout={after}", options=["--max-time", "30"])
        return reply.status, time.monotonic() - started

    with ThreadPoolExecutor(len(cases)) as pool:
        results = {k: pool.submit(timed, *v) for k, v in cases.items()}
    for label, (initial, after) in cases.items():
        status, elapsed = results[label].result()
        assert status == 200, label
        assert elapsed >= (initial + after) / 1000, (label, elapsed)


@case("tls")
def test_tls(stack: Stack) -> None:
    from tests.certificates import self_signed

    name = unique("tls")
    target = create_backend(stack, name)
    host = f"{name}.example.com"
    cert, key = self_signed(host)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": name, "namespace": NS, "labels": {"networking.internal.knative.dev/certificate-uid": "test-uid"}},
              "stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()}}
    stack.plane.write(f"secret-{name}.yaml", [secret])
    ingress = ingress_object(name, ingress_rule([host], http_path(split(target))), tls=[{"hosts": [host], "secretName": name, "secretNamespace": NS}])
    create_ingress_ready(stack, ingress)
    assert curl(stack.ports.external, host).status == 200
    ca = stack.workdir / f"{name}.crt"
    ca.write_bytes(cert)
    secure = curl(stack.ports.external_tls, host, scheme="https", options=["--cacert", str(ca)])
    assert secure.status == 200 and secure.json()["request"]["host"] == host


@case("update")
def test_update(stack: Stack) -> None:
    """10 spec updates, then 10 backend swaps deleting the old backend, under continuous traffic,
    through two gateways sharing the listener ports (SO_REUSEPORT), as two replicas would."""
    second = Gateway(stack.workdir, stack.plane, name="gw-update")
    try:
        wait_until(lambda: len(gws := stack.plane.gateways()) == 2 and all(g["synced"] for g in gws), what="two synced gateways")
        name = unique("update")
        host = f"{name}.example.com"
        current = create_backend(stack, f"{name}-first")
        ingress = ingress_object(name, ingress_rule([host], http_path(split(current, **{"Who-Are-You": current[0]}))))
        create_ingress_ready(stack, ingress)
        # Short-lived curl processes: new connections reach both gateways.
        with Traffic(stack.ports.external, [host], 10, path=lambda: f"/?time={time.time_ns()}") as traffic:
            for i in range(10):
                sentinel = f"{name}-sentinel-{i}"
                ingress = update_ingress(stack, ingress, ingress_rule([host], http_path(split(current, **{"Who-Are-You": sentinel}))))
                assert header(curl(stack.ports.external, host), "Who-Are-You") == sentinel
            for i in range(10):
                previous, current = current, create_backend(stack, f"{name}-{i}")
                sentinel = f"{name}-swap-{i}"
                ingress = update_ingress(stack, ingress, ingress_rule([host], http_path(split(current, **{"Who-Are-You": sentinel}))))
                reply = curl(stack.ports.external, host)
                assert (header(reply, "Who-Are-You"), reply.json()["server"]["name"]) == (sentinel, current[0])
                delete_backend(stack, previous[0])
        assert traffic.sent > 100, f"the load loop sent only {traffic.sent} requests"
        assert traffic.failures == []
        for gateway in (stack.gateway, second):
            # Routes (RDS, and SRDS in the scoped layout), clusters, endpoints: nothing rejected.
            rejected = gateway.stats_matching("update_rejected$")
            assert "cluster_manager.cds.update_rejected" in rejected
            assert {k: v for k, v in rejected.items() if v} == {}
    finally:
        second.stop()


@case("visibility")
def test_visibility(stack: Stack) -> None:
    name = unique("visibility")
    target = create_backend(stack, name)
    hosts = [private_host(f"{name}-{form}", form) for form in range(3)]
    create_ingress_ready(stack, ingress_object(name, ingress_rule(hosts, http_path(split(target)), visibility="ClusterLocal")))
    for host in hosts:
        assert curl(stack.ports.external, host).status == 404, host
    for form, host in enumerate(hosts):
        proxy_host = public_proxy(stack, f"{name}-proxy-{form}", host, domain="publicproxy.example.com")
        reply = curl(stack.ports.external, proxy_host)
        assert reply.status == 200 and reply.json()["request"]["host"] == host


@case("visibility/split")
def test_visibility_split(stack: Stack) -> None:
    name = unique("vis-split")
    names, splits = percentage_backends(stack, name)
    host = private_host(name)
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], http_path(*splits), visibility="ClusterLocal")))
    assert curl(stack.ports.external, host).status == 404
    proxy_host = public_proxy(stack, f"{name}-proxy", host)
    before = {n: stack.backends.hits[n] for n in names}
    assert_percentages(shares(curl_many(stack.ports.external, proxy_host, 1000), "Foo-Bar-Baz"), names, PERCENTAGES, stack, before)


@case("visibility/path")
def test_visibility_path(stack: Stack) -> None:
    name = unique("vis-path")
    host = private_host(name)
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], *path_backends(stack, name), visibility="ClusterLocal")))
    for request_path in ("/", "/foo", "/bar", "/baz"):
        assert curl(stack.ports.external, host, request_path).status == 404, request_path
    assert_path_dispatch(stack.ports.external, public_proxy(stack, f"{name}-proxy", host), name)


@case("ingressclass")
def test_ingressclass(stack: Stack) -> None:
    name = unique("class")
    target = create_backend(stack, name)
    host = f"{name}.example.com"
    variants: list[dict[str, str] | None] = [None, {}, {"networking.knative.dev/ingress.class": "incorrect"}, {"networking.knative.dev/ingress.class": ""}]
    written = {}
    for i, annotations in enumerate(variants):
        ingress = ingress_object(f"{name}-{i}", ingress_rule([host], http_path(split(target))), annotations=annotations or {})
        if annotations is None:
            del ingress["metadata"]["annotations"]
        stack.plane.write(f"ing-{name}-{i}.yaml", [ingress])
        written[i] = (stack.plane.source / f"ing-{name}-{i}.yaml").read_bytes()
    time.sleep(2)
    assert not {f"{NS}/{name}-{i}" for i in range(4)} & stack.plane.ingresses().keys()
    assert all((stack.plane.source / f"ing-{name}-{i}.yaml").read_bytes() == written[i] for i in range(4))
    assert curl(stack.ports.external, host).status == 404
    # They take no part in conflict bookkeeping either: our Ingress gets the same host.
    create_ingress_ready(stack, ingress_object(f"{name}-ours", ingress_rule([host], http_path(split(target)))))
    assert curl(stack.ports.external, host).status == 200


async def websocket_round_trips(stack: Stack, session: aiohttp.ClientSession, host: str, count: int, first: str = "ping") -> str:
    """Dial the public gateway with Host set to the Ingress host; returns the suffix the server adds."""
    async with session.ws_connect(f"http://{LOCAL}:{stack.ports.external}/", headers={"Host": host}, timeout=aiohttp.ClientWSTimeout(ws_receive=45)) as ws:
        await ws.send_str(f"{first} -0")
        reply = await ws.receive_str()
        assert reply.startswith(f"{first} -0 ")
        suffix = reply[len(f"{first} -0 ") :]
        for i in range(1, count):
            await ws.send_str(f"{first} -{i}")
            assert await ws.receive_str() == f"{first} -{i} {suffix}"
        return suffix


@case("websocket")
async def test_websocket(stack: Stack) -> None:
    host, _ = await asyncio.to_thread(basic_ingress, stack, unique("websocket"), images.wsserver("- pong"))
    async with aiohttp.ClientSession() as session:
        assert await websocket_round_trips(stack, session, host, 100) == "- pong"


@case("websocket/split")
async def test_websocket_split(stack: Stack) -> None:
    name = unique("ws-split")
    blue, green = (create_backend(stack, f"{name}-{c}", images.wsserver(f"- {c}")) for c in ("blue", "green"))
    host = f"{name}.example.com"
    await asyncio.to_thread(create_ingress_ready, stack, ingress_object(name, ingress_rule([host], http_path(split(blue, 50), split(green, 50)))))
    seen: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            seen.add(await websocket_round_trips(stack, session, host, 11))
            if seen == {"- blue", "- green"}:
                break
    assert seen == {"- blue", "- green"}


@case("host-rewrite")
def test_host_rewrite(stack: Stack) -> None:
    name = unique("rewrite")
    target = create_backend(stack, name)
    private = private_host(f"{name}-priv")
    create_ingress_ready(stack, ingress_object(f"{name}-priv", ingress_rule([private], http_path(split(target)), visibility="ClusterLocal")))
    # The suite points an ExternalName Service at kourier-internal:80; locally the internal listener
    # is 127.0.0.1 on a free port, so the Service port is that port (Envoy dials externalName:port).
    external_name_service(stack, f"{name}-priv", LOCAL, stack.ports.internal)
    vanity = [f"{name}.vanity.ismy.name", f"{name}.vanity.isalsomy.number"]
    hairpin = (f"{name}-priv", stack.ports.internal)
    create_ingress_ready(stack, ingress_object(name, ingress_rule(vanity, http_path(split(hairpin), rewrite_host=private))))
    for host in vanity:
        reply = curl(stack.ports.external, host)
        assert reply.status == 200 and reply.json()["request"]["host"] == private


@case("headers/tags")
def test_headers_tags(stack: Stack) -> None:
    name = unique("tags")
    target = create_backend(stack, name)
    host = f"{name}.example.com"
    paths = [
        http_path(split(target), headers={"Knative-Serving-Tag": "the-tag"}, append={"Which-Backend": "tag"}),
        http_path(split(target), append={"Which-Backend": "no-tag"}),
    ]
    create_ingress_ready(stack, ingress_object(name, ingress_rule([host], *paths)))
    cases = {"Knative-Serving-Tag: the-tag": "tag", "Knative-Serving-Tag;": "no-tag", "Knative-Serving-Tag: not-the-tag": "no-tag", "": "no-tag"}
    with ThreadPoolExecutor(len(cases)) as pool:
        replies = {h: pool.submit(curl, stack.ports.external, host, "/", [h] if h else []) for h in cases}
    for client_header, expected in cases.items():
        assert header(replies[client_header].result(), "Which-Backend") == expected, client_header


@case("httpoption")
def test_httpoption(stack: Stack) -> None:
    from tests.certificates import self_signed

    name = unique("httpoption")
    results = {}
    for option in ("Enabled", "Redirected"):
        ingress_name = f"{name}-{option.lower()}"
        target = create_backend(stack, ingress_name)
        host = f"{ingress_name}.example.com"
        cert, key = self_signed(host)
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": ingress_name, "namespace": NS},
                  "stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()}}
        stack.plane.write(f"secret-{ingress_name}.yaml", [secret])
        tls = [{"hosts": [host], "secretName": ingress_name, "secretNamespace": NS}]
        create_ingress_ready(stack, ingress_object(ingress_name, ingress_rule([host], http_path(split(target))), tls=tls, httpOption=option))
        ca = stack.workdir / f"{ingress_name}.crt"
        ca.write_bytes(cert)
        secure = curl(stack.ports.external_tls, host, scheme="https", options=["--cacert", str(ca)])
        results[option] = (secure.status, curl(stack.ports.external, host).status)
    assert results == {"Enabled": (200, 200), "Redirected": (200, 301)}
