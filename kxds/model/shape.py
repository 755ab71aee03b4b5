"""Bounds on a raw document's shape, checked before anything walks it recursively.

A Kubernetes object is a tree of modest depth. A YAML file can instead hold a graph: an alias
names an earlier node, so a few hundred bytes can stand for gigabytes once something expands it
(serialising for the probe hash does), and deep nesting makes recursive code (defaults, hashing)
raise RecursionError. This check walks the document iteratively, visiting each node once: a node
reached twice is an alias, and depth, node count and text size are bounded. The API server itself
caps an object at about 3 MiB, so the bounds are generous for real objects.
"""

from __future__ import annotations

from typing import Any

from kxds.model.errors import FieldError

MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_TEXT_BYTES = 8 * 1024 * 1024


def check_shape(document: Any) -> None:
    """Raise FieldError (at the path where a bound is crossed) for a document too deep, too
    large, or with a node shared under two parents (a YAML alias)."""
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    nodes = text = 0
    while stack:
        node, at, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise FieldError(at or "(document)", f"more than {MAX_NODES} values")
        if isinstance(node, str):
            text += len(node)
            if text > MAX_TEXT_BYTES:
                raise FieldError(at or "(document)", f"more than {MAX_TEXT_BYTES} bytes of text")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in seen:
            raise FieldError(at or "(document)", "a YAML alias (a value repeated by reference) is not accepted in an object")
        seen.add(id(node))
        if depth >= MAX_DEPTH:
            raise FieldError(at or "(document)", f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str):
                    text += len(key)
                stack.append((value, f"{at}.{key}" if at else str(key)[:100], depth + 1))
        else:
            stack.extend((value, f"{at}[{i}]", depth + 1) for i, value in enumerate(node))
