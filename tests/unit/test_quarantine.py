"""Which Ingresses a gateway's rejection holds out, and what gives them another chance."""

from __future__ import annotations

from kxds.model.ingress import Ingress, parse_ingress
from kxds.model.objects import ObjectKey
from kxds.quarantine import Quarantine
from tests.builders import ingress, path, rule, split


def parsed(name: str, service: str, host: str, secret: str = "") -> Ingress:
    doc = ingress(name, rule([host], path(split(service))))
    if secret:
        doc["spec"]["tls"] = [{"hosts": [host], "secretName": secret, "secretNamespace": "ns"}]
    result = parse_ingress(doc)
    assert isinstance(result, Ingress)
    return result


A, B, C = parsed("a", "svc-a", "a.example.com"), parsed("b", "svc-b", "b.example.com", secret="cert-b"), parsed("c", "svc-ab", "c.example.com")


def test_named_by_envoys_message() -> None:
    cases = {
        "route: unknown weighted cluster 'ns/svc-a'": ["ns/a"],  # a cluster, not its longer sibling ns/svc-ab
        "Only unique values for domains are permitted. Duplicate entry of domain b.example.com": ["ns/b"],
        "error in vhost (ns/c).Domain[c.example.com]": ["ns/c"],
        "Failed to load certificate chain from ns/cert-b": ["ns/b"],
        "something unrelated": [],
    }
    for message, expected in cases.items():
        assert [i.key for i in Quarantine().implicate([A, B, C], message)] == expected, message


def test_a_message_naming_nothing_falls_back_to_the_few_changed_resources() -> None:
    assert [i.key for i in Quarantine().implicate([A, B, C], "Invalid duration", ["ns/svc-b"])] == ["ns/b"]
    burst = [f"ns/svc-{n}" for n in range(6)] + ["ns/svc-a"]
    assert Quarantine().implicate([A, B, C], "Invalid duration", burst) == []  # too many suspects to blame one


def test_held_until_the_ingress_or_what_it_uses_changes() -> None:
    quarantine = Quarantine()
    quarantine.implicate([A, B], "unknown weighted cluster 'ns/svc-a' and 'ns/svc-b'")
    assert quarantine.held(A) and quarantine.held(B)
    assert quarantine.implicate([A], "ns/svc-a") == []
    quarantine.release([ObjectKey("EndpointSlice", "ns", "svc-a-1"), ObjectKey("Service", "ns", "unrelated")])
    assert quarantine.held(A)
    quarantine.release([ObjectKey("Service", "ns", "svc-a")])
    assert quarantine.held(A) is None and quarantine.held(B)
    quarantine.release([ObjectKey("Secret", "ns", "cert-b")])
    assert quarantine.held(B) is None
    quarantine.implicate([A], "ns/svc-a")
    quarantine.release([ObjectKey("Ingress", "ns", "a")])
    assert quarantine.held(A) is None
