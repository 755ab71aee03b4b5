"""The ConfigMaps kxds reads: config-kourier and config-network (namespace knative-serving).

An invalid value is reported by key and never served: the controller keeps the value the key had
before (the default if none), so one typo never changes or stops the gateway configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kxds.model import fields
from kxds.model.errors import FieldError

KOURIER_CONFIG_NAME = "config-kourier"
NETWORK_CONFIG_NAME = "config-network"

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """host:port of a gateway-wide service (ext-authz, the tracing collector)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtAuthzConfig:
    """Kourier's global external authorization (`extauthz-*` keys or KOURIER_EXTAUTHZ_* env)."""

    endpoint: Endpoint
    protocol: str = "grpc"  # grpc | http | https
    failure_mode_allow: bool = False
    max_request_bytes: int = 8192
    timeout_ms: int = 2000
    path_prefix: str = ""
    pack_as_bytes: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """OpenTelemetry tracing (`tracing-*` keys)."""

    endpoint: Endpoint
    protocol: str = "grpc"  # grpc | http/protobuf
    path: str = "/v1/traces"  # http/protobuf only
    sampling_rate: float = 1.0
    service_name: str = "kourier-knative"


@dataclass(frozen=True, slots=True, kw_only=True)
class KourierConfig:
    enable_service_access_logging: bool = True
    service_access_log_template: str = ""
    stream_idle_timeout_seconds: float = 0.0
    trusted_hops_count: int = 0
    use_remote_address: bool = False
    disable_envoy_server_header: bool = False
    enable_proxy_protocol: bool = False
    listen_ip_addresses: tuple[str, ...] = ()  # () → the --listen-address setting
    cipher_suites: tuple[str, ...] = ()
    certs_secret_name: str = ""
    certs_secret_namespace: str = ""
    cluster_cert_secret: str = ""
    ext_authz: ExtAuthzConfig | None = None
    tracing: TracingConfig | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)
    # Attributes whose key held an invalid value: the controller restores their previous value.
    invalid: frozenset[str] = field(default=frozenset(), compare=False)

    def keeping(self, previous: KourierConfig) -> KourierConfig:
        """This configuration with every invalid key at the value it had in `previous`."""
        if not self.invalid:
            return self
        return replace(self, **{attr: getattr(previous, attr) for attr in self.invalid})


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    system_internal_tls: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)


def parse_kourier_config(data: Mapping[str, Any]) -> KourierConfig:
    problems: list[str] = []
    invalid: set[str] = set()
    defaults = KourierConfig()
    values: dict[str, Any] = {}
    for key, attr, convert in _KOURIER_KEYS:
        if key not in data:
            continue
        try:
            values[attr] = convert(data[key], f"data.{key}")
        except FieldError as exc:
            invalid.add(attr)
            problems.append(_problem(KOURIER_CONFIG_NAME, exc, getattr(defaults, attr)))
    for attr, parse in (("ext_authz", parse_ext_authz), ("tracing", _tracing)):
        try:
            values[attr] = parse(data, "data.")
        except FieldError as exc:
            invalid.add(attr)
            problems.append(_problem(KOURIER_CONFIG_NAME, exc, None, what="feature stays as it was (off if never set)"))
    return KourierConfig(**values, problems=tuple(problems), invalid=frozenset(invalid))


def parse_network_config(data: Mapping[str, Any]) -> NetworkConfig:
    problems: list[str] = []

    def read(key: str, convert: Callable[[Any, str], T], default: T) -> T:
        try:
            return convert(data[key], f"data.{key}") if key in data else default
        except FieldError as exc:
            problems.append(_problem(NETWORK_CONFIG_NAME, exc, default))
            return default

    internal_tls = read("system-internal-tls", _enabled, None)
    if internal_tls is None:  # the deprecated spelling
        internal_tls = read("internal-encryption", _boolean, False)
    return NetworkConfig(system_internal_tls=internal_tls, problems=tuple(problems))


def parse_ext_authz(data: Mapping[str, Any], prefix: str = "data.", keys: Mapping[str, str] | None = None) -> ExtAuthzConfig | None:
    """ext-authz from `extauthz-*` keys (or, with `keys`, from other names for the same settings:
    the KOURIER_EXTAUTHZ_* environment). None when no host is set."""
    names = keys or {k: f"extauthz-{k}" for k in _EXT_AUTHZ_KEYS}

    def value(setting: str, convert: Callable[[Any, str], T], default: T) -> T:
        key = names[setting]
        return convert(data[key], prefix + key) if key in data and data[key] != "" else default

    host = value("host", fields.string, "")
    if not host:
        return None
    protocol = value("protocol", _choice("grpc", "http", "https"), "grpc")
    pack_key = "pack-as-bytes" if names["pack-as-bytes"] in data else "pack-as-byte"  # the sample's spelling
    return ExtAuthzConfig(
        endpoint=_endpoint(host, prefix + names["host"]),
        protocol=protocol,
        failure_mode_allow=value("failure-mode-allow", _boolean, False),
        max_request_bytes=value("max-request-body-bytes", _non_negative, 8192),
        timeout_ms=value("timeout", _non_negative, 2000),
        path_prefix=value("path-prefix", _path_prefix, ""),
        pack_as_bytes=value(pack_key, _boolean, False),
    )


_EXT_AUTHZ_KEYS = ("host", "protocol", "failure-mode-allow", "max-request-body-bytes", "timeout", "path-prefix", "pack-as-bytes", "pack-as-byte")


def _tracing(data: Mapping[str, Any], prefix: str) -> TracingConfig | None:
    raw = data.get("tracing-endpoint")
    if not raw:
        return None
    at = prefix + "tracing-endpoint"
    protocol = _choice("grpc", "http/protobuf")(data.get("tracing-protocol") or "grpc", prefix + "tracing-protocol")
    text = fields.string(raw, at).strip()
    path = "/v1/traces"
    if "://" in text:  # http/protobuf takes a URL; its path is where spans are posted
        url = urlsplit(text)
        if url.scheme != "http" or not url.hostname:
            raise FieldError(at, f"invalid value {text!r}: expected host:port or http://host:port/path")
        text, path = url.netloc, url.path or path
    rate_text = fields.string(data.get("tracing-sampling-rate") or "1.0", prefix + "tracing-sampling-rate")
    try:
        rate = float(rate_text)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise FieldError(prefix + "tracing-sampling-rate", f"invalid value {rate_text!r}: expected a number from 0 to 1")
    return TracingConfig(
        endpoint=_endpoint(text, at),
        protocol=protocol,
        path=path,
        sampling_rate=rate,
        service_name=fields.string(data.get("tracing-service-name"), prefix + "tracing-service-name") or "kourier-knative",
    )


def _problem(config_name: str, exc: FieldError, default: Any, what: str = "") -> str:
    keeps = what or f"keeping its previous value (the default {default!r} if none)"
    return f"ConfigMap {config_name}: {exc.field}: {exc.problem}; {keeps}"


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


def _choice(*allowed: str) -> Callable[[Any, str], str]:
    def convert(value: Any, at: str) -> str:
        text = fields.string(value, at).strip().lower()
        if text not in allowed:
            raise FieldError(at, f"invalid value {value!r}: expected one of {', '.join(allowed)}")
        return text

    return convert


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


def _ip_list(value: Any, at: str) -> tuple[str, ...]:
    addresses = _comma_list(value, at)
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise FieldError(at, f"invalid value {value!r}: {address!r} is not an IPv4 or IPv6 address") from None
    return addresses


def _path_prefix(value: Any, at: str) -> str:
    text = fields.string(value, at).strip()
    if text and not text.startswith("/"):
        raise FieldError(at, f"invalid value {value!r}: must start with /")
    return text


def _endpoint(text: str, at: str) -> Endpoint:
    parsed = fields.host_port(text.strip())
    if parsed is None or not 0 < parsed[1] < 65536:
        raise FieldError(at, f"invalid value {text!r}: expected host:port")
    return Endpoint(host=parsed[0], port=parsed[1])


_KOURIER_KEYS: tuple[tuple[str, str, Callable[[Any, str], Any]], ...] = (
    ("enable-service-access-logging", "enable_service_access_logging", _boolean),
    ("service-access-log-template", "service_access_log_template", fields.string),
    ("stream-idle-timeout", "stream_idle_timeout_seconds", fields.go_duration),
    ("trusted-hops-count", "trusted_hops_count", _non_negative),
    ("use-remote-address", "use_remote_address", _boolean),
    ("disable-envoy-server-header", "disable_envoy_server_header", _boolean),
    ("enable-proxy-protocol", "enable_proxy_protocol", _boolean),
    ("listen-ip-addresses", "listen_ip_addresses", _ip_list),
    ("cipher-suites", "cipher_suites", _comma_list),
    ("certs-secret-name", "certs_secret_name", fields.string),
    ("certs-secret-namespace", "certs_secret_namespace", fields.string),
    ("cluster-cert-secret", "cluster_cert_secret", fields.string),
)


TRUST_BUNDLE_LABEL = "networking.knative.dev/trust-bundle"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustBundle:
    """A ConfigMap of the system namespace labelled `networking.knative.dev/trust-bundle: "true"`:
    with system-internal-tls, its PEM certificates are trusted for upstream TLS beside
    routing-serving-certs's ca.crt (Knative's trust-bundle convention)."""

    namespace: str
    name: str
    pem: bytes  # every valid PEM value, in key order
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def is_trust_bundle(metadata: Mapping[str, Any]) -> bool:
    labels = metadata.get("labels")
    return isinstance(labels, Mapping) and labels.get(TRUST_BUNDLE_LABEL) == "true"


def parse_trust_bundle(namespace: str, name: str, data: Mapping[str, Any]) -> TrustBundle:
    """Each value that holds PEM certificates is kept; any other is left out with a problem
    naming it (the rest of the bundle still applies)."""
    values, problems = [], []
    for key in sorted(data):
        value = data[key]
        if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value:
            problems.append(f"ConfigMap {namespace}/{name}: data.{key} holds no PEM certificate; left out of the trust bundle")
            continue
        values.append(value.strip() + "\n")
    return TrustBundle(namespace=namespace, name=name, pem="".join(values).encode(), problems=tuple(problems))
