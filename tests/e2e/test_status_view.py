"""`kxds status` against a running kxds with two gateways."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import Stack
from tests.e2e.harness import Gateway, free_port, wait_until

pytestmark = pytest.mark.e2e


def kxds_status(admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kxds", "status", "--admin-address", admin], capture_output=True, text=True, timeout=30, check=False)


def test_status_shows_ingresses_and_two_gateways_with_their_versions(stack: Stack) -> None:
    second = Gateway(stack.workdir, stack.plane, name="gw-status")
    try:
        wait_until(lambda: len(gws := stack.plane.gateways()) == 2 and all(g["synced"] for g in gws), what="two synced gateways")
        result = kxds_status(f"127.0.0.1:{stack.plane.admin_port}")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "GATEWAYS (2 connected" in out
        rows = [line for line in out.splitlines() if line.startswith("3scale-kourier-gateway")]
        assert len(rows) == 2 and all("SYNCED" in row for row in rows)
        for gateway in stack.plane.gateways():
            assert gateway["acked"]["CDS"] in out and gateway["acked"]["RDS"] in out
        assert out.startswith("INGRESSES (")
    finally:
        second.stop()


def test_status_says_when_kxds_is_unreachable() -> None:
    result = kxds_status(f"127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach kxds's admin" in result.stderr
