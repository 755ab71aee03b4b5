"""The ConfigMaps kxds reads: config-kourier and config-network (namespace knative-serving).

An invalid value is reported by key and the default is used in its place, so one typo never
stops the gateway configuration from being served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kxds.model import fields
from kxds.model.errors import FieldError

KOURIER_CONFIG_NAME = "config-kourier"
NETWORK_CONFIG_NAME = "config-network"

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class KourierConfig:
    enable_service_access_logging: bool = True
    service_access_log_template: str = ""
    stream_idle_timeout_seconds: float = 0.0
    trusted_hops_count: int = 0
    use_remote_address: bool = False
    disable_envoy_server_header: bool = False
    cipher_suites: tuple[str, ...] = ()
    certs_secret_name: str = ""
    certs_secret_namespace: str = ""
    cluster_cert_secret: str = ""
    problems: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    system_internal_tls: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)


def parse_kourier_config(data: Mapping[str, Any]) -> KourierConfig:
    problems: list[str] = []
    read = _reader(data, problems, KOURIER_CONFIG_NAME)
    return KourierConfig(
        enable_service_access_logging=read("enable-service-access-logging", _boolean, True),
        service_access_log_template=read("service-access-log-template", fields.string, ""),
        stream_idle_timeout_seconds=read("stream-idle-timeout", fields.go_duration, 0.0),
        trusted_hops_count=read("trusted-hops-count", _non_negative, 0),
        use_remote_address=read("use-remote-address", _boolean, False),
        disable_envoy_server_header=read("disable-envoy-server-header", _boolean, False),
        cipher_suites=read("cipher-suites", _comma_list, ()),
        certs_secret_name=read("certs-secret-name", fields.string, ""),
        certs_secret_namespace=read("certs-secret-namespace", fields.string, ""),
        cluster_cert_secret=read("cluster-cert-secret", fields.string, ""),
        problems=tuple(problems),
    )


def parse_network_config(data: Mapping[str, Any]) -> NetworkConfig:
    problems: list[str] = []
    read = _reader(data, problems, NETWORK_CONFIG_NAME)
    internal_tls = read("system-internal-tls", _enabled, None)
    if internal_tls is None:  # the deprecated spelling
        internal_tls = read("internal-encryption", _boolean, False)
    return NetworkConfig(system_internal_tls=internal_tls, problems=tuple(problems))


def _reader(data: Mapping[str, Any], problems: list[str], config_name: str) -> Callable[[str, Callable[[Any, str], Any], Any], Any]:
    def read(key: str, convert: Callable[[Any, str], T], default: T) -> T:
        if key not in data:
            return default
        try:
            return convert(data[key], f"data.{key}")
        except FieldError as exc:
            problems.append(f"ConfigMap {config_name}: {exc.field}: {exc.problem}; using the default {default!r}")
            return default

    return read


def _boolean(value: Any, at: str) -> bool:
    text = fields.string(value, at).strip().lower()
    if text not in ("true", "false"):
        raise FieldError(at, f"invalid value {value!r}: expected true or false")
    return text == "true"


def _enabled(value: Any, at: str) -> bool:
    text = fields.string(value, at).strip().lower()
    if text not in ("enabled", "disabled"):
        raise FieldError(at, f"invalid value {value!r}: expected Enabled or Disabled")
    return text == "enabled"


def _non_negative(value: Any, at: str) -> int:
    try:
        number = int(fields.string(value, at).strip())
    except ValueError:
        raise FieldError(at, f"invalid value {value!r}: expected a whole number") from None
    if number < 0:
        raise FieldError(at, f"invalid value {value!r}: must not be negative")
    return number


def _comma_list(value: Any, at: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in fields.string(value, at).split(",") if p.strip()))
