"""The Knative probe hash of an Ingress spec, byte-for-byte as Go's encoding/json computes it.

Rule source: knative.dev/networking pkg/ingress/ingress.go (ComputeHash) — sha256 over
JSON(spec) ‖ namespace ‖ name, with the Go struct field order of ingress_types.go.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Go's encoding/json escapes these for HTML safety; Python's json does not.
_GO_EXTRA_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def probe_hash(spec: Mapping[str, Any], namespace: str, name: str) -> str:
    """Hash of an already *defaulted* raw spec, as the conformance suite recomputes it."""
    text = json.dumps(_spec(spec), separators=(",", ":"), ensure_ascii=False).translate(_GO_EXTRA_ESCAPES)
    return hashlib.sha256(text.encode() + namespace.encode() + name.encode()).hexdigest()


# Each helper projects a raw (decoded YAML/JSON) value onto the Go struct it would be decoded
# into, then yields the dict Go would encode: declaration order, omitempty fields dropped,
# non-omitempty nil slices as null. A JSON null element decodes to the zero struct.


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _put_nonempty(out: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", 0, False, [], {}):
        out[key] = value


def _sorted_map(value: Any) -> dict[str, Any]:
    # Go sorts map keys by their UTF-8 bytes, which is code point order for Python str.
    return dict(sorted(_obj(value).items()))


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put_nonempty(out, "tls", [_tls(t) for t in spec.get("tls") or []])
    _put_nonempty(out, "rules", [_rule(r) for r in spec.get("rules") or []])
    _put_nonempty(out, "httpOption", spec.get("httpOption"))
    return out


def _tls(raw: Any) -> dict[str, Any]:
    tls, out = _obj(raw), dict[str, Any]()
    _put_nonempty(out, "hosts", tls.get("hosts"))
    _put_nonempty(out, "secretName", tls.get("secretName"))
    _put_nonempty(out, "secretNamespace", tls.get("secretNamespace"))
    return out


def _rule(raw: Any) -> dict[str, Any]:
    rule, out = _obj(raw), dict[str, Any]()
    _put_nonempty(out, "hosts", rule.get("hosts"))
    _put_nonempty(out, "visibility", rule.get("visibility"))
    if rule.get("http") is not None:  # a pointer: omitted only when nil
        paths = _obj(rule["http"]).get("paths")
        out["http"] = {"paths": None if paths is None else [_path(p) for p in paths]}
    return out


def _path(raw: Any) -> dict[str, Any]:
    path, out = _obj(raw), dict[str, Any]()
    _put_nonempty(out, "path", path.get("path"))
    _put_nonempty(out, "rewriteHost", path.get("rewriteHost"))
    headers = {k: {"exact": _obj(v).get("exact") or ""} for k, v in _sorted_map(path.get("headers")).items()}
    _put_nonempty(out, "headers", headers)
    splits = path.get("splits")
    out["splits"] = None if splits is None else [_split(s) for s in splits]
    _put_nonempty(out, "appendHeaders", _string_map(path.get("appendHeaders")))
    return out


def _split(raw: Any) -> dict[str, Any]:
    split = _obj(raw)
    out: dict[str, Any] = {
        "serviceNamespace": split.get("serviceNamespace") or "",
        "serviceName": split.get("serviceName") or "",
        # IntOrString: kept as the API returned it; the zero value encodes as 0.
        "servicePort": split.get("servicePort") if split.get("servicePort") is not None else 0,
    }
    _put_nonempty(out, "percent", split.get("percent"))
    _put_nonempty(out, "appendHeaders", _string_map(split.get("appendHeaders")))
    return out


def _string_map(value: Any) -> dict[str, str]:
    return {k: "" if v is None else v for k, v in _sorted_map(value).items()}
