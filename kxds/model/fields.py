"""Typed reads of raw Kubernetes JSON that fail with the exact field path."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kxds.model.errors import FieldError


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(path, f"expected an object, got {_kind(value)}")
    return value


def required_mapping(value: Any, path: str) -> Mapping[str, Any]:
    """An object that must be present and non-empty (Knative's "missing field" rule)."""
    if not value:
        raise FieldError(path, "missing field")
    return mapping(value, path)


def sequence(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise FieldError(path, f"expected a list, got {_kind(value)}")
    return value


def string(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(path, f"expected a string, got {_kind(value)}")
    return value


def integer(value: Any, path: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(path, f"expected an integer, got {_kind(value)}")
    return value


def int_or_string(value: Any, path: str) -> int | str:
    if isinstance(value, str):
        return value
    return integer(value, path)


def string_map(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    """A map[string]string as name-sorted pairs (deterministic output downstream). The strings are
    interned: every Knative Ingress repeats the same header names and most of their values."""
    items = mapping(value, path)
    return tuple(sorted((sys.intern(str(k)), sys.intern(str(string(v, f"{path}.{k}")))) for k, v in items.items()))


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(value: Any, path: str) -> float:
    """Seconds in a Go time.ParseDuration string ("48h0m0s", "1.5s", "300ms"); "0" is zero."""
    text = string(value, path)
    if text in ("0", ""):
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise FieldError(path, f"invalid duration {text!r}: expected a Go duration such as 30s or 48h0m0s")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def host_port(text: str) -> tuple[str, int] | None:
    """("host", port) from "host:port" or "[ipv6]:port"; None when the text is not of that shape."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)
