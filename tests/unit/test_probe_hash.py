"""The probe hash against every vector of knative-ingress-contract.md §9.2."""

import json
from pathlib import Path

import pytest
import yaml

from kxds.model.ingress import parse_ingress
from kxds.model.probe_hash import probe_hash

EXAMPLES = Path(__file__).parents[2] / "examples"

VECTORS = [
    ("", "", r'{"rules":[{"hosts":["example.com"],"http":{"paths":[{"splits":[{"serviceNamespace":"","serviceName":"blah","servicePort":0}]}]}}]}',
     "a25000a350642c8abef53078b329bd043e18758f6063c1172d53b04e14fcf5c1"),
    ("", "", r'{"rules":[{"hosts":["example.com"],"http":{"paths":[{"splits":[{"serviceNamespace":"","serviceName":"blah","servicePort":0,"appendHeaders":{"Foo":"bar"}}]}]}}]}',
     "6b652c7abed871354affd4a9cb699d33816f24541fac942149b91ad872fe63ca"),
    ("serving-tests", "basics-demo",
     r'{"rules":[{"hosts":["basics-demo.example.com"],"visibility":"ExternalIP","http":{"paths":[{"splits":[{"serviceNamespace":"serving-tests","serviceName":"basics-demo-svc","servicePort":73,"percent":100}]}]}}],"httpOption":"Enabled"}',
     "186b8a1883418a4e108e906abe05e1c8f14559e195ff5046542cf6900e38755a"),
    ("ns", "esc",
     r'{"rules":[{"hosts":["esc.example.com"],"visibility":"ExternalIP","http":{"paths":[{"path":"/a\u0026b","headers":{"X-A":{"exact":""},"X-B":{"exact":"\u003cv\u003e"}},"splits":[{"serviceNamespace":"ns","serviceName":"svc","servicePort":"http","percent":100}],"appendHeaders":{"X-Y":"tab\there","X-Z":"é\u2028"}}]}}]}',
     "f8381f813396a8ea6a88cb454aa44e375e933426970979baf05ddfa2db1befd2"),
    ("ns", "n", r'{"rules":[{"http":{"paths":null}}]}', "fdc817718985cae721bd1f0a712a735dfe23d0d6b00941594db265acbab1fc07"),
]


@pytest.mark.parametrize(("namespace", "name", "payload", "expected"), VECTORS)
def test_reference_vectors(namespace: str, name: str, payload: str, expected: str) -> None:
    assert probe_hash(json.loads(payload), namespace, name) == expected


def test_serving_example_of_section_14() -> None:
    raw = yaml.safe_load((EXAMPLES / "hello-ingress.yaml").read_text())
    assert parse_ingress(raw).hash == "4dade923158b798181a2a24c104138ee17df33cc92cf8b3e9a6fbf89e1b3e2bf"


def test_hash_is_over_the_defaulted_spec() -> None:
    # Vector 3 stored without its defaults: kxds defaults in memory, then hashes.
    raw = {
        "metadata": {"namespace": "serving-tests", "name": "basics-demo"},
        "spec": {
            "httpOption": "Enabled",
            "rules": [{"hosts": ["basics-demo.example.com"], "http": {"paths": [{"splits": [
                {"serviceNamespace": "serving-tests", "serviceName": "basics-demo-svc", "servicePort": 73}]}]}}],
        },
    }
    assert parse_ingress(raw).hash == VECTORS[2][3]


def test_key_order_and_unknown_fields_do_not_matter() -> None:
    spec = json.loads(VECTORS[3][2])
    path = spec["rules"][0]["http"]["paths"][0]
    path["headers"] = dict(reversed(list(path["headers"].items())))
    path["unknownField"] = "pruned by the CRD"
    assert probe_hash(spec, "ns", "esc") == VECTORS[3][3]


def test_string_port_stays_a_string() -> None:
    spec = json.loads(VECTORS[2][2])
    spec["rules"][0]["http"]["paths"][0]["splits"][0]["servicePort"] = "73"
    assert probe_hash(spec, "serving-tests", "basics-demo") != VECTORS[2][3]
