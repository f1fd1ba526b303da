"""deploy/: the Prometheus alert rules pass ``promtool`` (check and unit tests), and every
expression of the rules and of the Grafana dashboard names only metrics the exporter serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tasks.api import enqueue_recording
from tasks.cli import metrics as cli_metrics
from tasks.store import metrics
from tests.conftest import ROOT, reset_process

RULES = ROOT / "deploy" / "prometheus" / "recorder-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "recorder-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "recorder-dashboard.json"
CLI_TEST_DB = int(os.environ.get("RECORDER_CLI_TEST_DB", "13"))
#: a metric name in PromQL: ours all start with recorder_
METRIC = re.compile(r"\b(recorder_[a-z_]+)\b")
#: the alerts the README's runbook must explain (and the rules must hold)
ALERTS = {
    "RecorderExporterDown",
    "RecorderNoWorkerConsuming",
    "RecorderQueueNotDraining",
    "RecorderJobsFailing",
    "RecorderJobsExpired",
    "RecorderRecordingsFailed",
    "RecorderApiRateLimited",
    "RecorderApiCoolingDown",
    "RecorderApiUnauthorized",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """The sample names one scrape of the exporter serves, over a db with calls and jobs."""
    url = f"redis://127.0.0.1:6379/{CLI_TEST_DB}"
    monkeypatch.setenv("REDIS_URL", url)
    client = redis.Redis.from_url(url)
    client.flushdb()
    reset_process()
    try:
        increments = metrics.call_increments(http_status=200, outcome="", latency_s=0.1)
        metrics.record(client, metrics.key("recorder"), increments)
        enqueue_recording("room-deploy")
        text = cli_metrics.exposition()
        yield {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    finally:
        client.flushdb()
        client.close()
        monkeypatch.undo()
        reset_process()


def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_each_alert_fires_on_trouble_and_not_on_health_in_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_hold_every_alert_the_runbook_explains() -> None:
    assert {rule["alert"] for rule in rules()} == ALERTS
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in rules())


def test_every_expression_names_only_metrics_the_exporter_serves(exported: set[str]) -> None:
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    assert len(exprs) > len(ALERTS)
    for expr in exprs:
        names = set(METRIC.findall(expr))
        assert names, f"no recorder_ metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {names - exported}, not served"


def test_the_dashboard_is_grafana_json_over_a_prometheus_datasource() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["type"] == "prometheus"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
