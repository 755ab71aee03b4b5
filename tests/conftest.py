"""Session-wide real parts shared by the e2e and conformance tests: one `kxds serve`, one Envoy, a backend pool."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Backends, ControlPlane, Gateway, ListenerPorts


class Stack:
    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.ports = ListenerPorts()
        self.backends = Backends()
        self.plane = ControlPlane(workdir, self.ports, env=env)
        # The gateway speaks delta xDS (the default); KXDS_TEST_DELTA=0 makes it state of the world.
        self.gateway = Gateway(workdir, self.plane, bootstrap_options={"delta": os.environ.get("KXDS_TEST_DELTA", "1") != "0"})

    def close(self) -> None:
        self.gateway.stop()
        self.plane.stop()
        self.backends.close()

    def tail_logs(self) -> str:
        out = []
        for path in (self.plane.log_path, self.gateway.log_path):
            lines = path.read_text(errors="replace").splitlines()[-40:]
            out.append(f"--- {path} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(out)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("e2e"))
    yield s
    s.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    stacks = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Stack)]
    if report.when == "call" and report.failed and stacks:
        report.sections.append(("kxds and Envoy logs", stacks[0].tail_logs()))
    return report
