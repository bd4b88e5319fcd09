"""Issue 5's acceptance: a real Prometheus scrapes the controller through a failure and every panel
of the Grafana dashboard (helm/respawn/dashboards/respawn-training-jobs.json) returns data.

The controller runs in-process, the node agent runs the pods, and Prometheus (Debian's binary; .ci/run
installs it) scrapes `/metrics` every second, as the chart serves it: only to a bearer token whose
identity may `get` /metrics (a ServiceAccount bound to such a ClusterRole, its token from the
TokenRequest API, given to Prometheus as `authorization.credentials_file`). The job's workers are a
small stand-in trainer (below): it writes steps.jsonl and commits checkpoints the way the trainer
does, so the controller's checkpoint awareness, steps-lost and time-to-recover metrics all see a
real failure: rank 1 is SIGKILLed after a checkpoint at step 5 and step 8, the gang restarts and
resumes from step 5. The job is held running
(the stand-in waits for a `release` file) while the dashboard is evaluated, because the checkpoint
age of a finished job is not exported.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.adapters.metrics import RESTART_REASONS
from controller.app import Controller
from devcluster.controlplane import free_port
from respawn_cli.__main__ import main as respawn
from tests.support import REPO
from tests.support.deploy import metrics_reader
from tests.support.kube import create_job, job_status, running_controller
from tests.support.manifests import training_job
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import poll, wait_for

pytestmark = pytest.mark.slow
DASHBOARD = REPO / "helm" / "respawn" / "dashboards" / "respawn-training-jobs.json"
SCRAPE_INTERVAL = "1s"
# Grafana's interval variables, as concrete durations: with a 1 s scrape, a minute holds every sample
# the test produces.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}

# A stand-in trainer: steps.jsonl records and committed checkpoints in the trainer's layout
# (docs/trainer.md), resuming from its own meta.json. Attempt 0 runs steps 1-8 (checkpoint 5);
# attempt 1 resumes and runs to step 12 (checkpoint 10); both then wait for `release`, and attempt 1
# exits 0. The wait is bounded so nothing outlives a failed test by long.
WORKER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from respawn_protocol.meta import Meta, Record, meta_path, read_meta
from respawn_protocol.report import Upload
from trainer_image.training.report import Reporter

out = Path(os.environ["RESPAWN_OUTPUT_DIR"])
rank, attempt = int(os.environ["RESPAWN_RANK"]), int(os.environ["RESPAWN_ATTEMPT"])
ckpt = out / "checkpoint" / f"rank_{rank}"
ckpt.mkdir(parents=True, exist_ok=True)
(out / "log" / f"rank_{rank}").mkdir(parents=True, exist_ok=True)
meta = read_meta(ckpt)
records = list(meta.checkpoints) if meta else []
start = meta.last_global_step if meta else 0
resumed = {"file": meta.last_ckpt_file, "step": start, "global_step": start} if meta else None
end, save = (8, 5) if attempt == 0 else (12, 10)
reporter = Reporter.from_env(os.environ, rank=rank, attempt=attempt)  # start-up timings, commits
reporter.phase("import", 0.1)
with open(out / "log" / f"rank_{rank}" / "steps.jsonl", "a") as log:
    for step in range(start + 1, end + 1):
        record = {"global_step": step, "epoch": 1, "step": step, "loss": 5.0 / step, "lr": 0.001}
        if step == start + 1:
            record.update(resumed_from=resumed, startup_seconds=0.1)
        log.write(json.dumps(record) + "\n")
        log.flush()
        reporter.stepped(step, 0.05)
        if step == save:
            name = f"stand_in_rank_{rank}-1_{step}.ckpt"
            data = bytes([step]) * 64
            (ckpt / name).write_bytes(data)
            records.append(Record(name, 1, step, step, len(data), hashlib.sha256(data).hexdigest()))
            meta_path(ckpt).write_bytes(Meta(1, step, name, step, records).to_json())
            reporter.committed(step=step, epoch=1, file=name, attempt=attempt)
            # As a rank with a checkpoint store reports it (the dashboard's uploads panel).
            reporter.uploaded(Upload(step=step, pending=0, lag_seconds=0.2))
reporter.close()
deadline = time.monotonic() + 240
while not (out / "release").exists():
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.1)
"""


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"{path} {params}: {exc.code} {exc.read().decode(errors='replace')}"
            ) from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])


@pytest.fixture
def shared_controller(
    api_client: client.ApiClient, namespace: str, shared_root: Path
) -> Iterator[Controller]:
    """As tests.support.fixtures', with /metrics authentication on, as the chart runs it."""
    with running_controller(
        api_client, namespace, shared=shared_root, device_faults=False, metrics_auth=True
    ) as controller:
        yield controller


@pytest.fixture
def prometheus_token(api_client: client.ApiClient, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A file holding a token of ServiceAccount `prometheus`, allowed to get /metrics."""
    with metrics_reader(api_client, namespace, "prometheus") as token:
        path = tmp_path / "prometheus-token"
        path.write_text(token)
        path.chmod(0o600)
        yield path


@pytest.fixture
def prometheus(shared_controller: Controller, prometheus_token: Path, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not on PATH: apt-get install prometheus (.ci/run does)")
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
                "scrape_configs": [
                    {
                        "job_name": "respawn-controller",
                        # As the chart's ServiceMonitor: the per-job series' own `namespace`
                        # label (the TrainingJob's) wins over the scrape target's.
                        "honor_labels": True,
                        # As the ServiceMonitor's bearerTokenFile: Prometheus's own token.
                        "authorization": {"credentials_file": str(prometheus_token)},
                        "static_configs": [{"targets": [f"127.0.0.1:{shared_controller.health.port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"prometheus exited {process.returncode}:\n{_tail(workdir / 'prometheus.log')}"
            )
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for("prometheus to be ready", ready, 60)
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:])


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included. The
    dashboard is written alongside this test; wait for it a little if it is not there yet."""
    wait_for(f"{DASHBOARD.relative_to(REPO)}", DASHBOARD.exists, 5)
    board = json.loads(DASHBOARD.read_text())
    out = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            visit(panel.get("panels") or [])
            for target in panel.get("targets") or []:
                if target.get("expr") and not target.get("hide"):
                    out.append((str(panel.get("title", "")), str(target["expr"])))

    visit(board.get("panels") or [])
    return out


def restart_annotation() -> str:
    board = json.loads(DASHBOARD.read_text())
    [annotation] = [a for a in board["annotations"]["list"] if a["name"] == "Restarts"]
    return str(annotation["expr"])


def concrete(expr: str, namespace: str, **overrides: str) -> str:
    """Grafana's variables replaced: the interval ones by durations, `$namespace` by this test's,
    `$trainingjob` by its job."""
    # [a-z0-9-]: nothing to escape
    values = {**GRAFANA_VARIABLES, "namespace": namespace, "trainingjob": "pm", **overrides}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def test_every_dashboard_panel_has_data_after_a_failure(
    api_client: client.ApiClient,
    namespace: str,
    shared_controller: Controller,
    shared_root: Path,
    prometheus: Prometheus,
    node_agent: NodeAgentHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    output = shared_root / namespace / "pm"
    job = training_job(
        "pm", command=[sys.executable, "-c", WORKER], shared=shared_root, backoff=(0, 1), maxRestarts=2
    )
    create_job(api_client, namespace, job)

    def status() -> dict[str, Any]:
        return job_status(api_client, namespace, "pm")

    # Prometheus scrapes the controller (target up) before anything fails.
    wait_for("the scrape target to be up", lambda: prometheus.query('up{job="respawn-controller"} == 1'), 30)
    wait_for(
        "checkpoint 5 on both ranks", lambda: status().get("lastCompleteCheckpoint", {}).get("step") == 5, 120
    )
    node_agent.kill(namespace, "pm-a0-1")
    wait_for(
        "attempt 1 running with checkpoint 10",
        lambda: (
            (s := status()).get("attempt") == 1
            and s.get("phase") == "Running"
            and s.get("lastCompleteCheckpoint", {}).get("step") == 10
        ),
        120,
    )
    failure = status()["lastFailure"]
    assert (failure["pod"], failure["exitCode"], failure["counted"]) == ("pm-a0-1", 137, True)

    # What the controller exported, as Prometheus stored it.
    selector = f'namespace="{namespace}"'
    restarts = wait_for(
        "the restart to be scraped",
        lambda: prometheus.query(f"respawn_restarts_total{{{selector}}} > 0"),
        30,
    )
    assert [(r["metric"]["reason"], r["metric"]["class"], r["value"][1]) for r in restarts] == [
        ("Error", "counted", "1")
    ]
    # Every reason and class of the job existed at 0 before its first restart, so the "Restarts by
    # reason" panel counts that restart (a series born at 1 has nothing to increase from).
    children = prometheus.query(f"respawn_restarts_total{{{selector}}}")
    assert len(children) == 2 * len(RESTART_REASONS)
    board = dict(dashboard_expressions())
    by_reason = prometheus.query(concrete(board["Restarts by reason"], namespace, __rate_interval="5m"))
    counted = {r["metric"]["reason"]: float(r["value"][1]) for r in by_reason}
    assert counted["Error"] >= 0.9 and sum(counted.values()) == counted["Error"], counted
    # The dashboard's restart annotation marks it, at the dashboard's interval.
    annotation = concrete(restart_annotation(), namespace)
    now = time.time()
    marks = prometheus.get(
        "/api/v1/query_range", query=annotation, start=str(now - 300), end=str(now), step="5"
    )
    assert [m["metric"] for m in marks["result"]] == [
        {"namespace": namespace, "trainingjob": "pm", "reason": "Error"}
    ]
    lost = wait_for("steps lost", lambda: prometheus.query(f"respawn_steps_lost_sum{{{selector}}}"), 30)
    assert lost[0]["value"][1] == "3", "killed after step 8, resumed from checkpoint 5"
    wait_for(
        "time to recover",
        lambda: prometheus.query(f"respawn_time_to_recover_seconds_count{{{selector}}}"),
        30,
    )
    # The restart timed to the next trained step, once the new gang reported its start-up.
    recovery = wait_for(
        "status.lastRecovery", lambda: status().get("lastRecovery", {}).get("totalSeconds"), 60
    )
    phases = status()["lastRecovery"]["seconds"]
    assert recovery > max(phases.values()) > 0 and {"detect", "podStart", "import", "firstStep"} <= set(
        phases
    )
    by_phase = wait_for(
        "recovery phases scraped",
        lambda: prometheus.query(f"respawn_recovery_phase_seconds_count{{{selector}}} > 0"),
        30,
    )
    assert {r["metric"]["phase"] for r in by_phase} >= {"detect", "podStart", "import", "firstStep"}
    wait_for(
        "recovery scraped", lambda: prometheus.query(f"respawn_recovery_seconds_count{{{selector}}} > 0"), 30
    )

    # Every panel of the dashboard, as Grafana would send it. Rates need two samples after a change,
    # so each expression is polled until it returns a series (or the deadline passes).
    expressions = dashboard_expressions()
    assert len(expressions) >= 8, expressions
    results: dict[str, list[dict[str, Any]]] = {}
    pending = list(expressions)

    def every_panel_has_data() -> bool:
        for title, expr in list(pending):
            series = prometheus.query(concrete(expr, namespace))
            if series:
                results[expr] = series
                pending.remove((title, expr))
        return not pending

    poll(every_panel_has_data, 60, interval=0.5)
    assert not pending, "panels without data:\n" + "\n".join(f"  {t}: {e}" for t, e in pending)
    with capsys.disabled():
        print(f"\n{len(expressions)} dashboard expressions with data, {time.monotonic() - started:.1f}s in:")
        for title, expr in expressions:
            values = ", ".join(f"{r['metric'] or '{}'}={r['value'][1]}" for r in results[expr][:3])
            print(f"  {title}: {values}")

    age = results[next(e for _t, e in expressions if "respawn_checkpoint_age_seconds" in e)]
    assert [r["metric"] for r in age] == [{"namespace": namespace, "trainingjob": "pm"}]

    # The dashboard's namespace variable lists this job's namespace, its job variable this job.
    variable = prometheus.get("/api/v1/label/namespace/values", **{"match[]": "respawn_job_restarts"})
    assert namespace in variable
    jobs = prometheus.get(
        "/api/v1/label/trainingjob/values", **{"match[]": f'respawn_job_restarts{{namespace="{namespace}"}}'}
    )
    assert jobs == ["pm"]
    phase = results[next(e for _t, e in expressions if "respawn_job_phase" in e)]
    assert [(r["metric"]["trainingjob"], r["metric"]["phase"]) for r in phase] == [("pm", "Running")]
    codes = results[next(e for _t, e in expressions if "respawn_rest_client_requests_total" in e)]
    assert "200" in {r["metric"]["code"] for r in codes}
    assert prometheus.query('respawn_build_info{version!=""}'), "build info scraped"
    per_job = results[next(e for _t, e in expressions if "respawn_job_restarts" in e)]
    assert sorted((r["metric"]["class"], r["value"][1]) for r in per_job) == [
        ("counted", "1"),
        ("uncounted", "0"),
    ]

    # Let the job finish; then the CLI's view of the same run.
    (output / "release").touch()
    wait_for("the job to succeed", lambda: status().get("phase") == "Succeeded", 60)
    assert (
        respawn(
            [
                "status",
                "pm",
                "-n",
                namespace,
                "--kubeconfig",
                str(node_agent.kubeconfig),
                "--output-dir",
                str(output),
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "Restarts:     1 counted, 0 uncounted" in report, report
    assert (
        "rank 1 start 1: resumed from step 5 (stand_in_rank_1-1_5.ckpt) after step 8, 3 steps redone"
        in report
    )
    assert (
        respawn(["plot", "--output-dir", str(output), "--rank", "1", "-o", str(tmp_path / "loss.png")]) == 0
    )
    assert "2 starts, 1 failures, 3 steps redone" in capsys.readouterr().out
