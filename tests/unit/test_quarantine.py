"""Which Ingress a gateway's rejection holds out (found among the suspects, whatever the message says),
and what gives it another chance."""

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


def search(suspects: list[Ingress], culprits: set[str]) -> tuple[set[str], int]:
    """Drive the search as the controller and Envoy would: a snapshot is rejected while it serves a
    culprit; the suspects of a rejection are what it serves that no accepted snapshot did.
    Returns what ends up held out and how many rejections it took."""
    quarantine, rejections, verified = Quarantine(), 0, set()
    for _ in range(64):
        kept, _, _ = quarantine.split(tuple(suspects))
        if any(i.key in culprits for i in kept):
            rejections += 1
            quarantine.on_rejected([i for i in kept if i.key not in verified], "rejected")
        else:
            verified |= {i.key for i in kept}
            if not quarantine.accepted():
                break
    return {i.key for i, _ in quarantine.split(tuple(suspects))[1]}, rejections


def many(count: int) -> list[Ingress]:
    return [parsed(f"i{n:02d}", f"svc-{n}", f"i{n}.example.com") for n in range(count)]


def test_one_suspect_is_the_culprit_whatever_the_message_names() -> None:
    quarantine = Quarantine()
    assert quarantine.on_rejected([B], "error in vhost (ns/a).Domain[a.example.com]", ["external_services"]) == [B]
    rejection = quarantine.held(B)
    assert rejection is not None and rejection.message == "external_services: error in vhost (ns/a).Domain[a.example.com]"
    assert quarantine.held(A) is None  # named by the message, but it did not change


def test_the_search_holds_out_exactly_the_culprits_among_many_suspects() -> None:
    for count, culprits in ((5, {"ns/i02"}), (10, {"ns/i00"}), (10, {"ns/i09"}), (33, {"ns/i17", "ns/i30"}), (2, {"ns/i00", "ns/i01"})):
        held, rejections = search(many(count), culprits)
        assert held == culprits, (count, culprits, held)
        assert rejections <= len(culprits) * (count.bit_length() + 2), rejections  # logarithmic, not one per suspect


def test_a_rejection_no_suspect_explains_lets_the_last_culprit_back_in() -> None:
    quarantine = Quarantine()
    assert quarantine.on_rejected([A], "listener refused", ()) == [A]
    assert quarantine.verdict_pending()
    assert quarantine.on_rejected([], "listener refused again", ()) == []  # without A, still rejected: not A
    assert quarantine.held(A) is None and not quarantine.holding


def test_held_back_suspects_come_in_once_the_others_are_accepted() -> None:
    quarantine = Quarantine()
    assert quarantine.on_rejected([A, B, C], "Invalid duration", ()) == []
    kept, held, deferred = quarantine.split((A, B, C))
    assert [i.key for i in kept] == ["ns/a"] and not held and [i.key for i in deferred] == ["ns/b", "ns/c"]
    assert quarantine.accepted()
    assert quarantine.split((A, B, C)) == ((A, B, C), [], [])


def test_held_until_the_ingress_or_what_it_uses_changes() -> None:
    quarantine = Quarantine()
    quarantine.on_rejected([A], "rejected")
    quarantine.accepted()
    quarantine.on_rejected([B], "rejected")
    assert quarantine.held(A) and quarantine.held(B)
    quarantine.release([ObjectKey("EndpointSlice", "ns", "svc-a-1"), ObjectKey("Service", "ns", "unrelated")])
    assert quarantine.held(A)
    quarantine.release([ObjectKey("Service", "ns", "svc-a")])
    assert quarantine.held(A) is None and quarantine.held(B)
    quarantine.release([ObjectKey("Secret", "ns", "cert-b")])
    assert quarantine.held(B) is None
    quarantine.on_rejected([A], "rejected")
    quarantine.release([ObjectKey("Ingress", "ns", "a")])
    assert quarantine.held(A) is None


def test_only_ingresses_whose_changes_reach_the_rejected_type_are_suspects() -> None:
    from kxds.quarantine import implicated
    from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

    changed = [A, B, C]
    assert [i.key for i in implicated(changed, CLUSTER, ["ns/svc-a"])] == ["ns/a"]  # not ns/svc-ab's Ingress
    assert [i.key for i in implicated(changed, ENDPOINT, ["ns/svc-ab"])] == ["ns/c"]
    assert [i.key for i in implicated(changed, SECRET, ["ns/cert-b"])] == ["ns/b"]
    assert [i.key for i in implicated(changed, LISTENER, ["listener_8443"])] == ["ns/b"]  # HTTPS listeners come from TLS
    assert implicated(changed, ROUTE, ["external_services"]) == changed
