"""The chart's alerts and the dashboard's restart count, checked by `promtool test rules` (from
Debian's prometheus package, which .ci/run installs): the PrometheusRule as the chart renders it
against tests/deploy/promtool/alerts.test.yaml, and the "Restarts by reason" panel's own
expression against a restart counter that starts at 0 (as the controller now exports it) and one
born at 1 (as it did before: its first restart was invisible)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.deploy import ALL_OPTIONS, CHART, Rendered

pytestmark = pytest.mark.timeout(300)

Render = Callable[..., Rendered]
PROMETHEUS_OPERATOR = ("--api-versions", "monitoring.coreos.com/v1")
CASES = REPO / "tests" / "deploy" / "promtool" / "alerts.test.yaml"
DASHBOARD = CHART / "dashboards" / "respawn-training-jobs.json"
ALERTS = {
    "RespawnJobFailed",
    "RespawnRestartBudgetNearlySpent",
    "RespawnRestartStorm",
    "RespawnCheckpointStale",
    "RespawnCheckpointUploadsFailing",
    "RespawnControllerDown",
    "RespawnNoLeader",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not on PATH: apt-get install prometheus (.ci/run does)")
    return binary


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def rules(render: Render, *args: str) -> dict[str, Any]:
    """The rendered PrometheusRule's spec: a Prometheus rule file as it is."""
    return dict(
        render(*PROMETHEUS_OPERATOR, "--set", "metrics.prometheusRule.enabled=true", *args).one(
            "PrometheusRule"
        )["spec"]
    )


def alerts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


def test_the_rule_is_rendered_only_when_asked_and_served(render: Render) -> None:
    assert "PrometheusRule" not in render(*PROMETHEUS_OPERATOR).kinds(), "rendered although disabled"
    on = ("--set", "metrics.prometheusRule.enabled=true")
    assert "PrometheusRule" not in render(*on).kinds(), "rendered although the cluster has no such API"
    rule = render(*on, *PROMETHEUS_OPERATOR).one("PrometheusRule")
    assert rule["metadata"]["namespace"] == "respawn-system"


def test_every_alert_passes_its_promtool_unit_tests(render: Render, promtool: str, tmp_path: Path) -> None:
    spec = rules(render)
    assert set(alerts(spec)) == ALERTS
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    checked = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Text substitution, not a YAML round trip: PyYAML would read a series' "0x3" as the number 3.
    cases = CASES.read_text()
    assert "\nrule_files: []\n" in cases
    (tmp_path / "alerts.test.yaml").write_text(
        cases.replace("\nrule_files: []\n", "\nrule_files: [rules.yaml]\n")
    )
    tested = run(promtool, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_each_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    tests = yaml.safe_load(CASES.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == quiet == ALERTS


def test_the_rule_values_reach_the_expressions(render: Render) -> None:
    spec = rules(render, "-f", str(ALL_OPTIONS))
    by_name = alerts(spec)
    assert 'job="respawn-metrics"' not in json.dumps(spec)
    assert (
        'respawn_job_phase{job="respawn-all-metrics", phase="Failed"}' in by_name["RespawnJobFailed"]["expr"]
    )
    assert ">= 0.75" in by_name["RespawnRestartBudgetNearlySpent"]["expr"]
    assert "[1h])) >= 5" in by_name["RespawnRestartStorm"]["expr"]
    assert "> 3600" in by_name["RespawnCheckpointStale"]["expr"]
    assert by_name["RespawnControllerDown"]["for"] == by_name["RespawnNoLeader"]["for"] == "10m"
    assert all(rule["labels"]["team"] == "ml-platform" for rule in by_name.values())
    rule = render(*PROMETHEUS_OPERATOR, "-f", str(ALL_OPTIONS)).one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Default: the job label the chart's ServiceMonitor gives the series (the Service's name).
    default = rules(render)
    service = render().one("Service")["metadata"]["name"]
    assert (
        f'up{{job="{service}", namespace="respawn-system"}} == 1'
        in alerts(default)["RespawnControllerDown"]["expr"]
    )


def _restarts_panel_expr() -> str:
    board = json.loads(DASHBOARD.read_text())
    [panel] = [p for p in board["panels"] if p["title"] == "Restarts by reason"]
    [target] = panel["targets"]
    # Grafana's variables as it sends them with "All" selected and a 5-minute rate interval.
    values = {"namespace": ".*", "trainingjob": ".*", "__rate_interval": "5m"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], str(target["expr"]))


def test_the_restarts_panel_counts_a_jobs_first_restart(promtool: str, tmp_path: Path) -> None:
    """One restart at minute 2. From a counter created at 0 the panel shows it; from one born at 1
    at its first restart (before the controller created the children at 0) it shows nothing."""
    expr = _restarts_panel_expr()
    labels = 'namespace="team", trainingjob="llm", reason="Error", class="counted"'

    def case(name: str, values: str, expected: float) -> dict[str, Any]:
        return {
            "name": name,
            "interval": "1m",
            "input_series": [{"series": f"respawn_restarts_total{{{labels}}}", "values": values}],
            "promql_expr_test": [
                {
                    "expr": expr,
                    "eval_time": "4m",
                    "exp_samples": [{"labels": '{reason="Error"}', "value": expected}],
                }
            ],
        }

    tests = {
        "evaluation_interval": "1m",
        "rule_files": [],
        "tests": [
            case("children created at 0 when the job is first seen", "0 0 1 1 1", 1),
            case("a child created by its first inc()", "_ _ 1 1 1", 0),
        ],
    }
    (tmp_path / "dashboard.test.yaml").write_text(yaml.safe_dump(tests))
    tested = run(promtool, "test", "rules", "dashboard.test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr

    # The test has teeth: claiming the born-at-1 counter shows the restart fails.
    tests["tests"] = [case("born at 1", "_ _ 1 1 1", 1)]
    (tmp_path / "dashboard.test.yaml").write_text(yaml.safe_dump(tests))
    assert run(promtool, "test", "rules", "dashboard.test.yaml", cwd=tmp_path).returncode != 0
