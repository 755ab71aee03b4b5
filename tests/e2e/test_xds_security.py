"""The xDS port with the default settings, tried as any pod in the cluster could: only a gateway
holding the certificate kxds provisioned is served; nothing a client sends can take Ingresses
down, starve the others or grow kxds's metrics or memory; no key leaves except to a gateway."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.rpc import status_pb2

from kxds.resources import CLUSTER, LISTENER, ROUTE, SECRET
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.certificates import CertificateAuthority, self_signed, tls_secret
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, curl, gateway_channel, rss_mib, wait_until

pytestmark = pytest.mark.e2e
NS = "ns"


class Secured:
    def __init__(self, workdir: Path) -> None:
        self.ports, self.backends = ListenerPorts(), Backends()
        self.plane = ControlPlane(workdir, self.ports)  # the defaults: kxds's own CA, mutual TLS
        self.gateway = Gateway(workdir, self.plane)
        port = self.backends.start("echo")
        cert, self.key = self_signed("secure.example.com", minutes=60)
        tls = [{"hosts": ["secure.example.com"], "secretName": "secure", "secretNamespace": NS}]
        self.plane.write("objects.yaml", [
            service("echo", target=port), endpoint_slice("echo", [LOCAL], port), tls_secret("secure", NS, cert, self.key),
            ingress("secure", rule(["secure.example.com"], path(split("echo"))), tls=tls),
            ingress("plain", rule(["plain.example.com"], path(split("echo")))),
        ])
        self.plane.wait_ready("ns/secure", timeout=30)
        self.plane.wait_ready("ns/plain")

    @property
    def key_body(self) -> str:
        """A line from the middle of the TLS Secret's private key: must never leave but to a gateway."""
        return self.key.decode().splitlines()[1]

    def rss_mib(self) -> float:
        return rss_mib(self.plane.process.pid)

    def close(self) -> None:
        self.gateway.stop()
        self.plane.stop()
        self.backends.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    env = Secured(tmp_path_factory.mktemp("security"))
    yield env
    env.close()


def _strangers(env: Secured) -> dict[str, grpc.Channel]:
    """Every way a pod without the gateway certificate could try the port."""
    assert env.plane.gateway_pki is not None
    ca = (env.plane.gateway_pki / "ca.crt").read_bytes()
    other = CertificateAuthority("another CA")
    cert, key, _ = other.issue("kxds-gateway", client=True)  # the right name, the wrong CA
    target = f"{LOCAL}:{env.plane.xds_port}"
    return {
        "plaintext": grpc.insecure_channel(target),
        "tls without a client certificate": grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)),
        "a certificate from another CA": grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)),
    }


def _calls(channel: grpc.Channel) -> dict[str, Callable[[], object]]:
    ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    wildcard_sds = discovery_pb2.DiscoveryRequest(type_url=SECRET, node={"id": "3scale-kourier-gateway"})
    by_name = discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=["ns/secure"], node={"id": "attacker"})
    delta = discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET, resource_names_subscribe=["*", "ns/secure"], node={"id": "attacker"})
    return {
        "SotW SDS by wildcard": lambda: next(iter(ads.StreamAggregatedResources(iter([wildcard_sds]), timeout=5))),
        "SotW SDS by name": lambda: next(iter(ads.StreamAggregatedResources(iter([by_name]), timeout=5))),
        "delta SDS": lambda: next(iter(ads.DeltaAggregatedResources(iter([delta]), timeout=5))),
        "unary FetchSecrets": lambda: sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(by_name, timeout=5),
        "CSDS fetch": lambda: csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5),
    }


def test_an_unauthenticated_client_gets_no_configuration_and_no_key(secured: Secured) -> None:
    for kind, channel in _strangers(secured).items():
        with channel:
            for call_name, call in _calls(channel).items():
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, f"{kind}, {call_name}: {refused.value}"
    # None of those attempts counted as a gateway, and the real one serves HTTPS as before.
    assert len(secured.plane.gateways()) == 1
    assert curl(secured.ports.external_tls, "secure.example.com", scheme="https", options=["-k"]).status == 200


def test_csds_shows_secrets_by_name_and_version_only(secured: Secured) -> None:
    with gateway_channel(secured.plane) as channel:
        status = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
    entries = [e for c in status.config for e in c.generic_xds_configs]
    secrets = [e for e in entries if e.type_url == SECRET]
    assert [e.name for e in secrets] == ["ns/secure"] and secrets[0].version_info
    assert not secrets[0].HasField("xds_config")
    assert any(e.HasField("xds_config") for e in entries if e.type_url == LISTENER)  # other bodies are still shown
    assert secured.key_body.encode() not in status.SerializeToString()
    for page in ("/ingresses", "/gateways", "/metrics"):
        assert secured.key_body not in secured.plane.get(page)[1].decode()
    assert secured.key_body not in secured.plane.log_path.read_text()


def _forge_nacks(channel: grpc.Channel, message: str, handled: Callable[[], bool]) -> list[str]:
    """Take the current clusters and listeners as a gateway would, reject them naming `message`,
    and keep the stream open until `handled()` says kxds has seen the rejections."""
    outgoing: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    outgoing.put(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node={"id": "3scale-kourier-gateway"}))
    outgoing.put(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
    stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iter(outgoing.get, None), timeout=30)
    seen: list[str] = []
    try:
        for response in stream:
            seen.append(response.type_url)
            outgoing.put(discovery_pb2.DiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce, version_info="",
                                                        error_detail=status_pb2.Status(code=3, message=message)))
            if len(seen) == 2:
                break
        wait_until(handled, what="kxds to see the forged NACKs")
    finally:
        outgoing.put(None)
        stream.cancel()
    return seen


def test_a_forged_nack_takes_nothing_down(secured: Secured) -> None:
    """Even a client holding the gateway certificate cannot withdraw what a real gateway accepted."""
    def handled() -> bool:
        log = secured.plane.log_path.read_text()
        return sum('"xds.nack"' in line and "refused by the forger" in line for line in log.splitlines()) == 2

    with gateway_channel(secured.plane) as channel:
        seen = _forge_nacks(channel, "Error adding/updating listener(s) ns/echo plain.example.com secure.example.com: refused by the forger", handled)
    assert sorted(seen) == sorted([CLUSTER, LISTENER])
    time.sleep(1.0)
    for name in ("plain", "secure"):
        assert secured.plane.ingresses()[f"ns/{name}"]["ready"], secured.plane.ingresses()[f"ns/{name}"]
    assert curl(secured.ports.external, "plain.example.com").status == 200
    assert curl(secured.ports.external_tls, "secure.example.com", scheme="https", options=["-k"]).status == 200
    # And the real gateway keeps receiving changes.
    secured.plane.write("later.yaml", [ingress("later", rule(["later.example.com"], path(split("echo"))))])
    secured.plane.wait_ready("ns/later")
    assert curl(secured.ports.external, "later.example.com").status == 200


def test_unknown_type_urls_are_answered_without_growing_metrics(secured: Secured) -> None:
    before = len(secured.plane.get("/metrics")[1])
    count = 10_000
    requests = (discovery_pb2.DiscoveryRequest(type_url=f"type.googleapis.com/attacker.Type{n}", node={"id": "x"}) for n in range(count))
    with gateway_channel(secured.plane) as channel:
        answered = sum(1 for _ in zip(range(count), ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests, timeout=60)))
    assert answered == count
    metrics = secured.plane.get("/metrics")[1].decode()
    assert "attacker" not in metrics and f"kxds_xds_unknown_type_requests_total {float(count)}" in metrics
    assert abs(len(metrics) - before) < 64  # the counters' digits, nothing per type URL


def test_oversized_requests_are_refused_without_growing_memory(secured: Secured) -> None:
    before = secured.rss_mib()
    huge = discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["x" * 65536] * 1024)  # 64 MiB
    many = discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=[str(n) for n in range(250_001)])
    for request, needle in ((huge, "larger than max"), (many, "at most 250000 resources")):
        with gateway_channel(secured.plane) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.StreamAggregatedResources(iter([request]), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert needle in str(refused.value.details()), refused.value.details()
    assert secured.rss_mib() - before < 50
    assert secured.plane.get("/healthz")[0] == 200
    assert curl(secured.ports.external, "plain.example.com").status == 200


def test_a_client_that_never_acknowledges_does_not_block_readiness(secured: Secured) -> None:
    """Any pod may open streams and never ACK: none of them counts as a gateway."""
    opened = []
    for kind, channel in _strangers(secured).items():
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node={"id": "3scale-kourier-gateway"})
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iter([request]), timeout=30)
        opened.append((kind, channel, stream))
    try:
        secured.plane.write("ready.yaml", [ingress("ready-anyway", rule(["ready.example.com"], path(split("echo"))))])
        secured.plane.wait_ready("ns/ready-anyway", timeout=10)
        assert len(secured.plane.gateways()) == 1
    finally:
        for _, channel, stream in opened:
            stream.cancel()
            channel.close()
