"""Knative Ingress (networking.internal.knative.dev/v1alpha1): parsing, defaults and validation.

Defaults and validation follow knative.dev/networking ingress_defaults.go and
ingress_validation.go; checks that keep Envoy from rejecting the translation are added on top.
"""

from __future__ import annotations

import copy
import enum
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kxds.model import fields
from kxds.model.errors import FieldError, InvalidObject
from kxds.model.probe_hash import probe_hash

API_VERSION = "networking.internal.knative.dev/v1alpha1"
CLASS_ANNOTATION = "networking.knative.dev/ingress.class"
DISABLE_HTTP2_ANNOTATION = "kourier.knative.dev/disable-http2"
# Skip the gateway's ext-authz check for this Ingress's hosts (net-kourier#1197).
DISABLE_EXT_AUTHZ_ANNOTATION = "kourier.knative.dev/disable-extauthz"
# Knative Serving's traffic tag → hosts map (JSON); see `_tag_rules`.
TAG_TO_HOST_ANNOTATION = "networking.internal.knative.dev/tag-to-host"
TAG_HEADER = "Knative-Serving-Tag"
# Knative reads the cluster domain from the pod's resolver; cluster-local tag hosts end with it.
LOCAL_SUFFIX = ".svc.cluster.local"


class Visibility(enum.StrEnum):
    EXTERNAL_IP = "ExternalIP"
    CLUSTER_LOCAL = "ClusterLocal"


class HTTPOption(enum.StrEnum):
    ENABLED = "Enabled"
    REDIRECTED = "Redirected"


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    service_namespace: str
    service_name: str
    service_port: int | str
    percent: int
    append_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Path:
    path: str = ""
    rewrite_host: str = ""
    # Header name → exact value; an empty value means "header present" (Kourier's reading).
    headers: tuple[tuple[str, str], ...] = ()
    splits: tuple[Split, ...]
    append_headers: tuple[tuple[str, str], ...] = ()
    # Removed from the API in Knative 0.26 but still found in old objects: honoured as the route timeout.
    timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    hosts: tuple[str, ...]
    visibility: Visibility
    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TLS:
    hosts: tuple[str, ...]
    secret_name: str
    secret_namespace: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ingress:
    namespace: str
    name: str
    generation: int
    creation_timestamp: str
    rules: tuple[Rule, ...]
    tls: tuple[TLS, ...] = ()
    http_option: HTTPOption = HTTPOption.ENABLED
    disable_http2: bool = False
    disable_ext_authz: bool = False
    labels: tuple[tuple[str, str], ...] = ()  # sent to ext-authz as context extensions
    hash: str
    # What was ignored as Knative ignores it (an invalid tag-to-host annotation), for the log.
    notes: tuple[str, ...] = field(default=(), compare=False)
    # "namespace/name": made once, the one string every index and cache keys this Ingress by.
    key: str = field(init=False, compare=False, repr=False)
    # "namespace/name" of every Service a split routes to: made once too (each translation and
    # index of the Ingress asks).
    services: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")
        splits = (s for rule in self.rules for p in rule.paths for s in p.splits)
        # Interned: the same text names the Service's cluster and keys the indexes of its users.
        object.__setattr__(self, "services", frozenset(sys.intern(f"{s.service_namespace}/{s.service_name}") for s in splits))

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(h for rule in self.rules for h in rule.hosts)

    @property
    def secrets(self) -> frozenset[str]:
        """"namespace/name" of every Secret its TLS entries name."""
        return frozenset(f"{t.secret_namespace}/{t.secret_name}" for t in self.tls)


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedIngress:
    """An Ingress of our class that failed validation: reported, never served."""

    namespace: str
    name: str
    generation: int
    hash: str
    error: InvalidObject = field(compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def ingress_class(raw: Mapping[str, Any]) -> str | None:
    metadata = raw.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    value = annotations.get(CLASS_ANNOTATION) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else None


def parse_ingress(raw: Mapping[str, Any]) -> Ingress | RejectedIngress:
    """Default, validate and type one Ingress document (its class is checked by the caller)."""
    raw_metadata = raw.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    namespace = metadata.get("namespace") or "default"
    name = metadata.get("name") or ""
    raw_generation = metadata.get("generation")
    generation = raw_generation if isinstance(raw_generation, int) else 0
    raw_spec = raw.get("spec")
    spec = apply_defaults(raw_spec if isinstance(raw_spec, Mapping) else {})
    # The hash is taken over the defaulted spec before probe paths exist (knative ingress.go).
    digest = probe_hash(spec, str(namespace), str(name))
    try:
        if not isinstance(namespace, str) or not isinstance(name, str) or not name:
            raise FieldError("metadata.name", "missing or not a string")
        namespace = sys.intern(namespace)  # shared with its splits and every other object in it
        spec = _spec(raw_spec, namespace)
        tag_hosts, notes = _tag_to_hosts(_annotation(metadata, TAG_TO_HOST_ANNOTATION))
        spec["rules"] = (*spec["rules"], *_tag_rules(spec["rules"], tag_hosts))
        return Ingress(
            namespace=namespace,
            name=sys.intern(name),  # shared with its key
            generation=generation,
            creation_timestamp=fields.string(metadata.get("creationTimestamp"), "metadata.creationTimestamp"),
            disable_http2=_annotation(metadata, DISABLE_HTTP2_ANNOTATION).lower() == "true",
            disable_ext_authz=_annotation(metadata, DISABLE_EXT_AUTHZ_ANNOTATION).lower() == "true",
            labels=fields.string_map(metadata.get("labels"), "metadata.labels"),
            hash=digest,
            notes=notes,
            **spec,
        )
    except FieldError as exc:
        error = InvalidObject("Ingress", str(namespace), str(name), exc.field, exc.problem)
        return RejectedIngress(namespace=str(namespace), name=str(name), generation=generation, hash=digest, error=error)


def _tag_to_hosts(annotation: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """The tag-to-host annotation: a JSON object of tag → hosts. Invalid, it is ignored (as
    Knative's TagToHosts ignores it) with a note; a tag with no hosts, or an invalid host, is left out."""
    if not annotation:
        return {}, ()
    note = f"metadata.annotations[{TAG_TO_HOST_ANNOTATION}]: ignored, "
    try:
        parsed = json.loads(annotation)
    except ValueError as exc:
        return {}, (note + f"not JSON ({exc})",)
    if not isinstance(parsed, dict) or not all(isinstance(v, list) and all(isinstance(h, str) for h in v) for v in parsed.values()):
        return {}, (note + "expected an object of tag to a list of hosts",)
    out, notes = {}, []
    for tag, hosts in parsed.items():
        valid = []
        for host in hosts:
            try:
                valid.append(_host(host, f"metadata.annotations[{TAG_TO_HOST_ANNOTATION}].{tag}"))
            except FieldError as exc:
                notes.append(f"{exc.field}: {exc.problem}; left out")
        if valid:
            out[str(tag)] = tuple(dict.fromkeys(valid))
    return out, tuple(notes)


def _tag_rules(rules: tuple[Rule, ...], tag_hosts: Mapping[str, tuple[str, ...]]) -> list[Rule]:
    """Knative's RouteHosts: a path that appends `Knative-Serving-Tag: <tag>` without matching on
    that header is also served on the tag's hosts — the non-cluster-local ones for an ExternalIP
    rule, the cluster-local ones with their short forms (`x.ns.svc`, `x.ns`) for a ClusterLocal
    rule. Each becomes a rule of its own, so the translator needs to know nothing of tags."""
    if not tag_hosts:
        return []
    out = []
    for rule in rules:
        for path in rule.paths:
            tag = next((v for k, v in path.append_headers if k.lower() == TAG_HEADER.lower()), "")
            if not tag or any(k.lower() == TAG_HEADER.lower() for k, _ in path.headers):
                continue
            local = rule.visibility is Visibility.CLUSTER_LOCAL
            hosts = [h for h in tag_hosts.get(tag, ()) if h.endswith(LOCAL_SUFFIX) == local]
            if local:
                hosts = [form for h in hosts for form in (h, h.removesuffix(".cluster.local"), h.removesuffix(LOCAL_SUFFIX))]
            extra = tuple(h for h in dict.fromkeys(hosts) if h not in rule.hosts)
            if extra:
                out.append(Rule(hosts=extra, visibility=rule.visibility, paths=(path,)))
    return out


def apply_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Knative's SetDefaults on a deep copy: rule visibility and a lone split's percent."""
    out = copy.deepcopy(dict(spec))
    for rule in out.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        if not rule.get("visibility"):
            rule["visibility"] = Visibility.EXTERNAL_IP.value
        http = rule.get("http")
        for path in (http.get("paths") or []) if isinstance(http, dict) else []:
            splits = path.get("splits") if isinstance(path, dict) else None
            if isinstance(splits, list) and len(splits) == 1 and isinstance(splits[0], dict):
                if not splits[0].get("percent"):
                    splits[0]["percent"] = 100
    return out


def _annotation(metadata: Mapping[str, Any], key: str) -> str:
    annotations = metadata.get("annotations")
    value = annotations.get(key) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else ""


def _spec(raw: Any, namespace: str) -> dict[str, Any]:
    if not raw:
        raise FieldError("spec", "missing field")
    spec = fields.mapping(raw, "spec")
    rules = fields.sequence(spec.get("rules"), "spec.rules")
    if not rules:
        raise FieldError("spec.rules", "missing field")
    option = fields.string(spec.get("httpOption"), "spec.httpOption")
    if option not in ("", *HTTPOption):
        raise FieldError("spec.httpOption", f"invalid value {option!r}: must be Enabled or Redirected")
    # Knative writes every path twice, in the ExternalIP rule and its ClusterLocal twin: equal paths
    # become one object, which the translator builds once (it tells paths apart by identity).
    shared: dict[Path, Path] = {}
    return {
        "rules": tuple(_rule(r, f"spec.rules[{i}]", namespace, shared) for i, r in enumerate(rules)),
        "tls": tuple(_tls(t, f"spec.tls[{i}]") for i, t in enumerate(fields.sequence(spec.get("tls"), "spec.tls"))),
        "http_option": HTTPOption(option or HTTPOption.ENABLED),
    }


def _rule(raw: Any, at: str, namespace: str, shared: dict[Path, Path]) -> Rule:
    rule = fields.required_mapping(raw, at)
    hosts = tuple(_host(h, f"{at}.hosts[{i}]") for i, h in enumerate(fields.sequence(rule.get("hosts"), f"{at}.hosts")))
    visibility = fields.string(rule.get("visibility"), f"{at}.visibility") or Visibility.EXTERNAL_IP
    if visibility not in set(Visibility):
        raise FieldError(f"{at}.visibility", f"invalid value {visibility!r}: must be ExternalIP or ClusterLocal")
    if rule.get("http") is None:
        raise FieldError(f"{at}.http", "missing field")
    http = fields.mapping(rule["http"], f"{at}.http")
    paths = fields.sequence(http.get("paths"), f"{at}.http.paths")
    if not paths:
        raise FieldError(f"{at}.http.paths", "missing field")
    return Rule(
        hosts=tuple(dict.fromkeys(hosts)),
        visibility=Visibility(visibility),
        paths=tuple(shared.setdefault(path, path) for path in (_path(p, f"{at}.http.paths[{j}]", namespace) for j, p in enumerate(paths))),
    )


# Hosts become Envoy vhost domains: keep to DNS characters (plus a leading wildcard label)
# so nothing we emit can be refused by Envoy's domain validation.
_HOST = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")


def _host(raw: Any, at: str) -> str:
    host = fields.string(raw, at).lower()
    if not _HOST.match(host) or len(host) > 253:
        raise FieldError(at, f"invalid host {raw!r}: must be a DNS name without port")
    return host


def _path(raw: Any, at: str, namespace: str) -> Path:
    path = fields.required_mapping(raw, at)
    splits = fields.sequence(path.get("splits"), f"{at}.splits")
    if not splits:
        raise FieldError(f"{at}.splits", "missing field")
    parsed = tuple(_split(s, f"{at}.splits[{k}]", namespace) for k, s in enumerate(splits))
    total = sum(s.percent for s in parsed)
    if total != 100 and not (len(parsed) == 1 and total == 0):
        raise FieldError(f"{at}.splits", f"the percentages must add up to 100, got {total}")
    if len(parsed) == 1 and parsed[0].percent == 0:
        parsed = (replace(parsed[0], percent=100),)
    prefix = fields.string(path.get("path"), f"{at}.path")
    _check_path(prefix, f"{at}.path")
    rewrite = fields.string(path.get("rewriteHost"), f"{at}.rewriteHost")
    if rewrite:
        _host(rewrite, f"{at}.rewriteHost")
    return Path(
        path=prefix,
        rewrite_host=rewrite,
        headers=_header_matches(path.get("headers"), f"{at}.headers"),
        splits=parsed,
        # One of the route's entries is the probe copy's K-Network-Hash.
        append_headers=_added_headers(path.get("appendHeaders"), f"{at}.appendHeaders", MAX_ADDED_HEADERS - 1),
        timeout_seconds=_legacy_timeout(path.get("timeout"), f"{at}.timeout"),
    )


def _split(raw: Any, at: str, namespace: str) -> Split:
    split = fields.required_mapping(raw, at)
    service_namespace = fields.string(split.get("serviceNamespace"), f"{at}.serviceNamespace")
    if not service_namespace:
        raise FieldError(f"{at}.serviceNamespace", "missing field")
    if service_namespace != namespace:
        raise FieldError(f"{at}.serviceNamespace", f"must equal the Ingress namespace {namespace!r}, got {service_namespace!r}")
    service_name = fields.string(split.get("serviceName"), f"{at}.serviceName")
    if not service_name:
        raise FieldError(f"{at}.serviceName", "missing field")
    port = fields.int_or_string(split.get("servicePort"), f"{at}.servicePort")
    if port in (0, ""):
        raise FieldError(f"{at}.servicePort", "missing field")
    if isinstance(port, int) and not 0 < port < 65536:
        raise FieldError(f"{at}.servicePort", f"invalid port {port}: must be 1-65535")
    percent = fields.integer(split.get("percent"), f"{at}.percent")
    if not 0 <= percent <= 100:
        raise FieldError(f"{at}.percent", f"invalid value {percent}: must be between 0 and 100")
    return Split(
        service_namespace=namespace,  # equal, checked above: the Ingress's own string
        service_name=sys.intern(service_name),  # shared with the Service, its slices and the other splits naming it
        service_port=port,
        percent=percent,
        append_headers=_added_headers(split.get("appendHeaders"), f"{at}.appendHeaders"),
    )


def _tls(raw: Any, at: str) -> TLS:
    tls = fields.required_mapping(raw, at)
    secret_name = fields.string(tls.get("secretName"), f"{at}.secretName")
    if not secret_name:
        raise FieldError(f"{at}.secretName", "missing field")
    secret_namespace = fields.string(tls.get("secretNamespace"), f"{at}.secretNamespace")
    if not secret_namespace:
        raise FieldError(f"{at}.secretNamespace", "missing field")
    hosts = fields.sequence(tls.get("hosts"), f"{at}.hosts")
    return TLS(
        hosts=tuple(_host(h, f"{at}.hosts[{i}]") for i, h in enumerate(hosts)),
        secret_name=secret_name,
        secret_namespace=secret_namespace,
    )


# RFC 7230 token characters: what Envoy accepts as a header name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Envoy's HeaderValue: key and value of at most 16 KiB (protoc-gen-validate max_bytes).
MAX_HEADER_BYTES = 16384
# Envoy's request_headers_to_add holds at most 1000 entries per route and per weighted cluster.
MAX_ADDED_HEADERS = 1000
# Envoy refuses a request whose headers pass 60 KiB (max_request_headers_kb): a longer path or
# header match could never be requested. Paths are held to the header bound.
MAX_PATH_BYTES = MAX_HEADER_BYTES
# Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection: Envoy removes or acts on them, so
# appending one breaks the request (no response for Connection/Transfer-Encoding, 101 for Upgrade/TE).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"})
# Envoy converts a route timeout to milliseconds and refuses anything from 2^63 ns up (Go's
# time.Duration has the same bound, so Knative could never have stored more).
MAX_TIMEOUT_SECONDS = 9_223_372_035
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_name(name: str, at: str) -> None:
    if len(name.encode()) > MAX_HEADER_BYTES:
        raise FieldError(at, f"header name is {len(name.encode())} bytes; Envoy accepts at most {MAX_HEADER_BYTES}")
    if not _HEADER_NAME.match(name):
        raise FieldError(at, f"invalid header name {name[:64]!r}: must be an HTTP token")


def _check_header_value(value: str, at: str, limit: int = MAX_HEADER_BYTES) -> None:
    size = len(value.encode())
    if size > limit:
        raise FieldError(at, f"value is {size} bytes; Envoy accepts at most {limit}")
    if (bad := _CONTROL.search(value)) is not None:
        raise FieldError(at, f"must not contain control characters (found {bad.group()!r})")


def _check_path(path: str, at: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise FieldError(at, f"{path[:64]!r} must start with '/': a request path always does, so it could never match")
    _check_header_value(path, at, MAX_PATH_BYTES)


def _header_matches(raw: Any, at: str) -> tuple[tuple[str, str], ...]:
    out = []
    for name, match in sorted(fields.mapping(raw, at).items()):
        _header_name(str(name), f"{at}.{name}")
        exact = fields.string(fields.mapping(match, f"{at}.{name}").get("exact"), f"{at}.{name}.exact")
        _check_header_value(exact, f"{at}.{name}.exact")
        out.append((sys.intern(str(name)), sys.intern(exact)))  # Knative's tag routes all match the same header
    return tuple(out)


def _added_headers(raw: Any, at: str, limit: int = MAX_ADDED_HEADERS) -> tuple[tuple[str, str], ...]:
    pairs = fields.string_map(raw, at)
    if len(pairs) > limit:
        raise FieldError(at, f"{len(pairs)} headers; at most {limit} fit in Envoy's {MAX_ADDED_HEADERS} per route or split")
    for name, value in pairs:
        _header_name(name, f"{at}.{name}")
        lowered = name.lower()
        # Envoy refuses to modify Host through request_headers_to_add (use rewriteHost).
        if lowered == "host":
            raise FieldError(f"{at}.{name}", "the Host header cannot be set; use rewriteHost")
        if lowered in HOP_BY_HOP:
            raise FieldError(f"{at}.{name}", "a hop-by-hop header cannot be appended: it describes the connection, and Envoy would break the request")
        _check_header_value(value, f"{at}.{name}")
    return pairs


def _legacy_timeout(raw: Any, at: str) -> float | None:
    """The removed `timeout` field of old Ingresses, a Go duration such as "48h0m0s"."""
    if raw is None:
        return None
    seconds = fields.go_duration(raw, at)
    if seconds > MAX_TIMEOUT_SECONDS:
        raise FieldError(at, f"{str(raw)[:64]!r} is beyond the longest timeout Envoy accepts ({MAX_TIMEOUT_SECONDS}s, about 292 years)")
    return seconds
