"""The one error raised for a Kubernetes document kxds cannot use."""

from __future__ import annotations


class InvalidObject(ValueError):
    """A document was rejected; the message names the object and the field path."""

    def __init__(self, kind: str, namespace: str, name: str, field: str, problem: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.field = field
        self.problem = problem
        where = f"{namespace}/{name}" if namespace else name or "<unnamed>"
        super().__init__(f"{kind} {where}: {field}: {problem}" if field else f"{kind} {where}: {problem}")


class FieldError(ValueError):
    """A problem found at a field path while parsing; turned into InvalidObject by the caller."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
