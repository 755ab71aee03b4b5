"""Bounds on a raw document's shape, checked before anything walks it recursively.

A Kubernetes object is a tree of modest depth. A YAML file can instead hold a graph: an alias
names an earlier node, so a few hundred bytes can stand for gigabytes once something expands it
(serialising for the probe hash does), and deep nesting makes recursive code (defaults, hashing)
raise RecursionError. This check walks the document iteratively, visiting each distinct node once: each
is measured once, so what aliases repeat is counted without being expanded, and depth, value count
and text size are bounded as if expanded. The API server itself caps an object at about 3 MiB, so
the bounds are generous for real objects.
"""

from __future__ import annotations

from typing import Any

from kxds.model.errors import FieldError

MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_TEXT_BYTES = 8 * 1024 * 1024


def check_shape(document: Any) -> None:
    """Raise FieldError, at the path where a bound is crossed, for a document too deep, too large
    once its aliases are expanded, or referring to itself. Aliases within the bounds are fine (a
    hand-written file may share a rule's paths); the expanded size is counted per distinct node,
    so a bomb is measured without being expanded."""
    done: dict[int, tuple[int, int, int]] = {}  # id → (expanded values, height, expanded text bytes)
    open_nodes: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(document, "", False)]
    while stack:
        node, at, children_done = stack.pop()
        if not isinstance(node, (dict, list)) or (not children_done and id(node) in done):
            continue
        if not children_done:
            if id(node) in open_nodes:
                raise FieldError(at or "(document)", "an alias refers to the value that contains it")
            open_nodes.add(id(node))
            stack.append((node, at, True))
            stack.extend((child, where, False) for child, where in _children(node, at))
            continue
        open_nodes.discard(id(node))
        values, height, text = 1, 1, 0
        for child, _ in _children(node, at):
            child_values, child_height, child_text = done.get(id(child)) or (1, 0, len(child) if isinstance(child, str) else 0)
            values, height, text = values + child_values, max(height, child_height + 1), text + child_text
        if isinstance(node, dict):
            text += sum(len(k) for k in node if isinstance(k, str))
        if height > MAX_DEPTH:
            raise FieldError(at or "(document)", f"nested deeper than {MAX_DEPTH} levels")
        if values > MAX_NODES:
            raise FieldError(at or "(document)", f"more than {MAX_NODES} values (counting what its YAML aliases repeat)")
        if text > MAX_TEXT_BYTES:
            raise FieldError(at or "(document)", f"more than {MAX_TEXT_BYTES} bytes of text (counting what its YAML aliases repeat)")
        done[id(node)] = (values, height, text)


def _children(node: dict[Any, Any] | list[Any], at: str) -> list[tuple[Any, str]]:
    if isinstance(node, dict):
        return [(value, f"{at}.{key}" if at else str(key)[:100]) for key, value in node.items()]
    return [(value, f"{at}[{i}]") for i, value in enumerate(node)]
