"""The benchmark harness still runs end to end (tiny sizes; the real figures come from bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def test_bench_runs_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--sizes", "20", "--changes", "3", "--trim-stats", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (report,) = tmp_path.glob("*.json")
    results = json.loads(report.read_text())["results"]  # side by side, in one run
    modes = ["default", "sotw", "kourier-layout", "kourier"]
    assert [r["mode"] for r in results] == modes
    for measured in results:
        assert measured["ingresses"] == 20 and measured["ingress_change"]["p50_ms"] > 0 and measured["endpoint_flip"]["max_ms"] > 0
        for event in ("create", "rollout", "delete"):  # the life-cycle scenarios
            assert measured[event]["p50_ms"] > 0, event
        assert measured["cpu_per_life_cycle_event_ms"] > 0
    table = (tmp_path / "latest.md").read_text()
    for mode in modes:
        assert f"| 20 | {mode} |" in table
    assert "20: create" in table
    (png,) = tmp_path.glob("2*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "latest.png").read_bytes() == png.read_bytes()


def test_kubernetes_bench_runs_and_reports(tmp_path: Path) -> None:
    """bench.kube: the emulator, `kxds serve --kubernetes`, a real Envoy, and a watching client."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.kube", "--sizes", "10", "--events", "2", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (report,) = tmp_path.glob("kube-*.json")
    (measured,) = json.loads(report.read_text())["results"]
    assert measured["ingresses"] == 10
    for event in ("create_routable", "create_status_ready", "rollout", "rollout_status_ready", "ingress_change", "endpoint_flip", "delete"):
        assert measured[event]["p50_ms"] > 0, event
    assert measured["emulator_call_ms"]["p50"] > 0 and measured["cpu_per_event_ms"] > 0
    assert "| 10 |" in (tmp_path / "kube-latest.md").read_text()
