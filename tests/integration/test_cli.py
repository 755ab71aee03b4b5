"""The `kxds` command line: flags from the environment, render, and a bootstrap Envoy accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kxds.cli import build_parser, settings_from
from kxds.envoy_process import envoy_binary
from tests.certificates import CertificateAuthority, write_gateway_bundle

ROOT = Path(__file__).parents[2]


def kxds(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kxds", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


def test_flags_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KXDS_SOURCE", "/srv/objects")
    monkeypatch.setenv("KXDS_EXTERNAL_HTTP_PORT", "18080")
    monkeypatch.setenv("KXDS_INGRESS_CLASS", "custom.ingress.networking.knative.dev")
    settings = settings_from(build_parser().parse_args(["serve", "--internal-http-port", "18081"]))
    assert str(settings.source_dir) == "/srv/objects"
    assert (settings.gateway.ports.external_http, settings.gateway.ports.internal_http) == (18080, 18081)
    assert settings.ingress_class == "custom.ingress.networking.knative.dev"
    assert settings.gateway.ports.probe_http == 8090  # Kourier's default


def test_httpoption_disabled_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOURIER_HTTPOPTION_DISABLED", "")
    assert settings_from(build_parser().parse_args(["serve", "--source", "x"])).gateway.http_option_disabled


def test_route_layout_from_flag_or_environment_and_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(build_parser().parse_args(["serve", "--source", "x"])).gateway.route_layout == "scoped"
    assert settings_from(build_parser().parse_args(["serve", "--source", "x", "--route-layout", "kourier"])).gateway.route_layout == "kourier"
    monkeypatch.setenv("KXDS_ROUTE_LAYOUT", "kourier")
    assert settings_from(build_parser().parse_args(["serve", "--source", "x"])).gateway.route_layout == "kourier"
    result = kxds("serve", "--source", "x", env={"KXDS_ROUTE_LAYOUT": "sharded"})
    assert result.returncode == 1 and "KXDS_ROUTE_LAYOUT): 'sharded' is not one of kourier, scoped" in result.stderr


def test_translate_processes_auto_explicit_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kxds.cli.available_cores", lambda: 16)
    assert settings_from(build_parser().parse_args(["serve", "--source", "x"])).translate_processes == 4
    monkeypatch.setattr("kxds.cli.available_cores", lambda: 1)
    assert settings_from(build_parser().parse_args(["serve", "--source", "x"])).translate_processes == 1
    assert settings_from(build_parser().parse_args(["serve", "--source", "x", "--translate-processes", "3"])).translate_processes == 3
    with pytest.raises(SystemExit, match="--translate-processes"):
        settings_from(build_parser().parse_args(["serve", "--source", "x", "--translate-processes", "0"]))


def test_every_command_that_serves_builds_its_settings() -> None:
    # The demo's parser has fewer flags than serve's; settings_from must not need serve-only ones.
    for argv in (["serve", "--source", "x"], ["run"]):
        assert settings_from(build_parser().parse_args(argv)).source_dir is not None, argv


def test_missing_source_is_a_usage_error() -> None:
    result = kxds("serve")
    assert result.returncode == 1 and "give --source DIR, or --kubernetes" in result.stderr


def test_render_prints_the_resources_as_json() -> None:
    result = kxds("render", "--source", str(ROOT / "examples"), "--route-layout", "kourier")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert [r["name"] for r in rendered["routes"]] == ["external_services", "internal_services"]
    assert rendered["ingresses"] == {"default/hello": {"programmed": True, "reason": "", "message": ""}}
    assert rendered["scoped_routes"] == []
    scoped = json.loads(kxds("render", "--source", str(ROOT / "examples")).stdout)  # the default layout
    assert sorted(r["name"] for r in scoped["routes"]) == ["external_services/default/hello", "internal_services/default/hello", "internal_services/internalkourier"]
    assert {s["route_configuration_name"] for s in scoped["scoped_routes"]} == {r["name"] for r in scoped["routes"]}


@pytest.mark.parametrize("xds_address", ["127.0.0.1:18000", "net-kourier-controller.knative-serving:18000"])
def test_bootstrap_is_accepted_by_envoy(tmp_path: Path, xds_address: str) -> None:
    bundle = write_gateway_bundle(tmp_path / "pki")
    result = kxds("bootstrap", "--xds-address", xds_address, "--admin-port", "9901", "--stats-port", "9000", "--xds-pki", str(bundle))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    xds = next(c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    context = xds["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["validation_context"]["trusted_ca"] == {"filename": f"{bundle}/ca.crt"}
    source = context["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
    assert source == {"path": f"{bundle}/sds.yaml", "watched_directory": {"path": str(bundle)}}
    # A gateway reconnects within a second of kxds coming back (Envoy's default backoff reaches 30 s).
    retry = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert retry == {"base_interval": "0.1s", "max_interval": "1s"}
    assert config["node"] == {"id": "3scale-kourier-gateway", "cluster": "kourier-knative"}
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"  # the default; --sotw for Kourier's
    # Envoy's default request budget (10 a second after 100) paced every create at ~0.5 s.
    assert config["dynamic_resources"]["ads_config"]["rate_limit_settings"] == {"max_tokens": 1000, "fill_rate": 100}
    # The node (61 KB with Envoy's extension list) on a stream's first request only: kxds reads no other.
    assert config["dynamic_resources"]["ads_config"]["set_node_on_first_message_only"] is True
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    # No flush timer: the 5-second flush held Envoy's main thread (which applies xDS) for ~0.5 s at
    # 10,000 Knative Services.
    assert config["stats_flush_on_admin"] is True and "stats_flush_interval" not in config
    (tmp_path / "bootstrap.yaml").write_text(result.stdout)
    validate = subprocess.run([envoy_binary(), "--mode", "validate", "--config-path", str(tmp_path / "bootstrap.yaml")],
                              capture_output=True, text=True, timeout=60, check=False)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_trimmed_stats_bootstrap_is_accepted_by_envoy(tmp_path: Path) -> None:
    result = kxds("bootstrap", "--xds-address", "127.0.0.1:18000", "--admin-port", "9901", "--trim-stats", "--insecure")
    config = yaml.safe_load(result.stdout)
    assert "transport_socket" not in next(c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    assert config["stats_config"]["stats_matcher"]["exclusion_list"]["patterns"] == [{"prefix": "cluster."}]
    (tmp_path / "bootstrap.yaml").write_text(result.stdout)
    validate = subprocess.run([envoy_binary(), "--mode", "validate", "--config-path", str(tmp_path / "bootstrap.yaml")],
                              capture_output=True, text=True, timeout=60, check=False)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_bootstrap_node_id_flag() -> None:
    result = kxds("bootstrap", "--xds-address", "127.0.0.1:1", "--admin-port", "1", "--node-id", "gw-7")
    assert yaml.safe_load(result.stdout)["node"]["id"] == "gw-7"
    assert yaml.safe_load(result.stdout)["static_resources"]["listeners"] == []


def test_bootstrap_with_mutual_tls_and_the_flags_that_must_go_together(tmp_path: Path) -> None:
    pem = CertificateAuthority()
    cert, key, _ = pem.issue("gateway", client=True)
    for name, data in (("ca.pem", pem.pem), ("tls.crt", cert), ("tls.key", key)):
        (tmp_path / name).write_bytes(data)
    result = kxds("bootstrap", "--xds-address", "net-kourier-controller.knative-serving:18000", "--admin-port", "9901",
                  "--xds-tls-ca", str(tmp_path / "ca.pem"), "--xds-tls-cert", str(tmp_path / "tls.crt"), "--xds-tls-key", str(tmp_path / "tls.key"))
    config = yaml.safe_load(result.stdout)
    socket = next(c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster")["transport_socket"]
    assert socket["typed_config"]["sni"] == "net-kourier-controller.knative-serving"
    (tmp_path / "bootstrap.yaml").write_text(result.stdout)
    validate = subprocess.run([envoy_binary(), "--mode", "validate", "--config-path", str(tmp_path / "bootstrap.yaml")],
                              capture_output=True, text=True, timeout=60, check=False)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    lone = kxds("bootstrap", "--xds-address", "127.0.0.1:1", "--admin-port", "1", "--xds-tls-cert", "tls.crt")
    assert lone.returncode != 0 and "go together" in lone.stderr
    serve = kxds("serve", "--source", str(tmp_path), "--xds-tls-cert", str(tmp_path / "missing.crt"), "--xds-tls-key", str(tmp_path / "tls.key"),
                 "--insecure")
    assert serve.returncode != 0 and "--xds-tls-cert: no such file" in serve.stderr
    # Server-only TLS authenticates nobody: it needs --xds-tls-ca, or --insecure said out loud.
    unauthenticated = kxds("serve", "--source", str(tmp_path), "--xds-tls-cert", str(tmp_path / "tls.crt"), "--xds-tls-key", str(tmp_path / "tls.key"))
    assert unauthenticated.returncode != 0 and "does not authenticate gateways" in unauthenticated.stderr


def test_kubernetes_mode_without_credentials_says_what_it_tried(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    result = subprocess.run([sys.executable, "-m", "kxds", "serve", "--kubernetes", "--xds-pki-dir", str(tmp_path / "pki")],
                            capture_output=True, text=True, timeout=60, env={**env, "HOME": str(tmp_path)}, check=False)
    assert result.returncode == 2, result.stderr
    assert "no Kubernetes credentials found; tried --kubeconfig (not given), $KUBECONFIG (unset)" in result.stderr
    assert f"{tmp_path}/.kube/config (missing)" in result.stderr


def test_bootstrap_speaks_delta_by_default_and_state_of_the_world_on_request() -> None:
    def api_type(*flags: str) -> str:
        result = kxds("bootstrap", "--xds-address", "127.0.0.1:1", "--admin-port", "1", *flags)
        assert result.returncode == 0, result.stderr
        return str(yaml.safe_load(result.stdout)["dynamic_resources"]["ads_config"]["api_type"])

    assert api_type() == api_type("--delta") == "DELTA_GRPC"  # --delta, the old opt-in, still parses
    assert api_type("--sotw") == "GRPC"
