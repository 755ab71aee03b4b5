"""Conformance plumbing: each test carries its suite case name; the run ends with a summary line."""

from __future__ import annotations

from typing import Any

import pytest

_outcomes: dict[str, str] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    marker = item.get_closest_marker("case")
    if marker and (report.when == "call" or report.failed or report.skipped):
        name = marker.args[0]
        if report.failed or report.skipped:
            _outcomes[name] = "failed"
        elif report.when == "call":
            _outcomes.setdefault(name, "passed")
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    by = {k: sorted(n for n, o in _outcomes.items() if o == k) for k in ("passed", "failed")}
    write = terminalreporter.write_line
    write("")
    for outcome in ("passed", "failed"):
        if by[outcome]:
            write(f"conformance {outcome}: {', '.join(by[outcome])}")
    write(f"conformance: {len(by['passed'])} passed, {len(by['failed'])} failed")
