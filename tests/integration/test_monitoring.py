"""Dashboards and alerts can use kxds's metrics from the first scrape: every labelled series with
known label values is exported at 0, and every metric the shipped alert rules and Grafana
dashboard name exists in /metrics."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from kxds import __version__
from kxds.app import Running, running
from kxds.metrics import XDS_TYPES
from kxds.settings import Settings, XdsPki
from kxds.xds.snapshot import SHORT_NAMES

ROOT = Path(__file__).parents[2]
MONITORING = ROOT / "deploy" / "monitoring"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Running]:
    shutil.copytree(ROOT / "examples", tmp_path / "source")
    settings = Settings(source_dir=tmp_path / "source", xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", pki=XdsPki(directory=tmp_path / "pki"))
    async with running(settings) as plane:
        yield plane


async def scrape(plane: Running) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{plane.admin_port}/metrics") as response:
        return await response.text()


def test_the_known_xds_types_are_the_served_ones() -> None:
    assert set(XDS_TYPES) == set(SHORT_NAMES.values())


async def test_every_known_series_is_there_at_zero_before_any_event(plane: Running) -> None:
    text = await scrape(plane)
    for kind in XDS_TYPES:
        for name in ("responses", "acks", "nacks", "stale_nonces"):
            assert f'kxds_xds_{name}_total{{type="{kind}"}} 0.0' in text, (name, kind)
    assert 'kxds_ingresses{ready="false"}' in text and 'kxds_ingresses{ready="true"}' in text
    assert 'kxds_rejected_objects_total{kind="Ingress"} 0.0' in text and "kxds_xds_unknown_type_requests_total 0.0" in text
    assert f'kxds_build_info{{version="{__version__}"}} 1.0' in text
    assert "kxds_gateways_unsynced 0.0" in text


def rule_exprs() -> list[str]:
    groups = yaml.safe_load((MONITORING / "kxds-alerts.yaml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all({"alert", "expr", "labels", "annotations"} <= rule.keys() for rule in rules)
    assert all(rule["labels"].get("severity") in ("warning", "critical") for rule in rules)
    return [str(rule["expr"]) for rule in rules]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "kxds-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


async def test_every_metric_the_alerts_and_the_dashboard_name_exists(plane: Running) -> None:
    exported = set(re.findall(r"^(kxds_\w+?)(?:\{| )", await scrape(plane), re.MULTILINE))
    for expr in [*rule_exprs(), *dashboard_exprs()]:
        for name in re.findall(r"\bkxds_\w+", expr):
            assert name in exported, f"{name} (in {expr!r}) is not exported"
    # The signals an operator pages on are all covered.
    alerts = " ".join(rule_exprs())
    for signal in ("kxds_gateways_unsynced", "kxds_xds_nacks_total", "kxds_convergence_seconds_bucket", 'kxds_ingresses{ready="false"}'):
        assert signal in alerts
