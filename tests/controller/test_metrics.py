"""The controller's metrics on their own registry: per-job series from a job's first reconcile to
its deletion, the phase gauge, the budget gauges, process metrics and build info."""

from __future__ import annotations

import platform
import tomllib

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from controller.adapters.metrics import RESTART_REASONS, JobSample, Metrics
from controller.api.constants import Phase
from controller.api.store import StoreStatus
from controller.version import VERSION
from tests.support import REPO


def metrics_with(jobs: list[JobSample]) -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.watch_state(lambda: jobs, lambda: 0, lambda: {"list": 1}, lambda: True)
    return metrics, registry


def test_a_jobs_restart_counters_exist_at_zero_from_its_first_reconcile_until_it_is_deleted() -> None:
    metrics, registry = metrics_with([])
    labels = {"namespace": "team", "trainingjob": "llm", "reason": "Error", "class": "counted"}
    assert registry.get_sample_value("respawn_restarts_total", labels) is None
    metrics.seen_job("team", "llm")
    # Every reason and class at 0: the first restart of each is then an increase from 0 to 1.
    for reason in RESTART_REASONS:
        for kind in ("counted", "uncounted"):
            value = registry.get_sample_value(
                "respawn_restarts_total", {**labels, "reason": reason, "class": kind}
            )
            assert value == 0.0, (reason, kind)
    assert {"Error", "NodeLost", "ProgressTimeout", "DeviceFault"} <= set(RESTART_REASONS)
    assert "InvalidSpec" not in RESTART_REASONS, "an invalid spec fails the job, never restarts it"
    # The namespace's histograms come with the job.
    assert registry.get_sample_value("respawn_recovery_seconds_count", {"namespace": "team"}) == 0.0

    metrics.record_restart("team", "llm", "Error", counted=True)
    metrics.seen_job("team", "llm")  # later reconciles keep the count
    assert registry.get_sample_value("respawn_restarts_total", labels) == 1.0

    metrics.forget_job("team", "llm")
    assert 'trainingjob="llm"' not in generate_latest(registry).decode()
    # A job of the same name created again starts from 0.
    metrics.seen_job("team", "llm")
    assert registry.get_sample_value("respawn_restarts_total", labels) == 0.0


def test_job_phase_is_one_for_the_current_phase_and_zero_for_every_other() -> None:
    jobs = [
        JobSample("team", "a", "Running", None, None, budget_used=2, max_restarts=3),
        JobSample("team", "b", "Failed", None, None, max_restarts=None),
    ]
    _metrics, registry = metrics_with(jobs)

    def phase(job: str, value: str) -> float | None:
        labels = {"namespace": "team", "trainingjob": job, "phase": value}
        return registry.get_sample_value("respawn_job_phase", labels)

    for p in Phase:
        assert phase("a", p.value) == (1.0 if p is Phase.RUNNING else 0.0), p
        assert phase("b", p.value) == (1.0 if p is Phase.FAILED else 0.0), p
    assert registry.get_sample_value("respawn_jobs", {"phase": "Running"}) == 1.0

    a = {"namespace": "team", "trainingjob": "a"}
    assert registry.get_sample_value("respawn_job_restart_budget_used", a) == 2.0
    assert registry.get_sample_value("respawn_job_restart_budget", a) == 3.0
    b = {"namespace": "team", "trainingjob": "b"}
    assert registry.get_sample_value("respawn_job_restart_budget_used", b) == 0.0
    assert registry.get_sample_value("respawn_job_restart_budget", b) is None, "no budget: no series"

    jobs.pop()  # deleted from the cache: its series go with it at the next scrape
    assert registry.get_sample_value("respawn_job_phase", {**b, "phase": "Failed"}) is None


def test_a_job_s_uploads_are_gauges_only_when_it_has_a_checkpoint_store() -> None:
    store = StoreStatus(step=None, pending=3, lag_seconds=41.5, failures=2, error="AccessDenied")
    _metrics, registry = metrics_with(
        [JobSample("team", "a", "Running", 5, 0.0, store=store), JobSample("team", "b", "Running", 5, 0.0)]
    )
    a, b = {"namespace": "team", "trainingjob": "a"}, {"namespace": "team", "trainingjob": "b"}
    assert registry.get_sample_value("respawn_checkpoint_upload_pending", a) == 3.0
    assert registry.get_sample_value("respawn_checkpoint_upload_lag_seconds", a) == 41.5
    assert registry.get_sample_value("respawn_checkpoint_upload_failures", a) == 2.0
    assert registry.get_sample_value("respawn_checkpoint_store_step", a) is None, "no step every rank has"
    for name in ("respawn_checkpoint_upload_pending", "respawn_checkpoint_upload_failures"):
        assert registry.get_sample_value(name, b) is None, "no store: no series"


def test_process_metrics_and_build_info_are_exported() -> None:
    _metrics, registry = metrics_with([])
    info = {"version": VERSION, "python_version": platform.python_version()}
    assert registry.get_sample_value("respawn_build_info", info) == 1.0
    assert registry.get_sample_value("python_info", {**_python_labels()}) == 1.0
    resident = registry.get_sample_value("process_resident_memory_bytes")
    assert resident is not None and resident > 1e6
    assert (registry.get_sample_value("process_open_fds") or 0) > 0


def _python_labels() -> dict[str, str]:
    major, minor, patch = platform.python_version_tuple()
    return {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patch,
        "version": platform.python_version(),
    }


def test_the_build_version_is_the_packages_and_the_charts() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((REPO / "helm" / "respawn" / "Chart.yaml").read_text())
    assert VERSION == project["version"] == chart["appVersion"]


def test_every_respawn_metric_is_documented() -> None:
    """docs/controller.md's Metrics table names every family the controller exports."""
    metrics, registry = metrics_with(
        [
            JobSample(
                "team", "a", "Running", 5, 0.0, max_restarts=3, suggested_interval=60, store=StoreStatus(4)
            )
        ]
    )
    metrics.seen_job("team", "a")
    docs = (REPO / "docs" / "controller.md").read_text()
    names = {family.name for family in registry.collect() if family.name.startswith("respawn_")}
    assert len(names) > 15
    suffix = {"counter": "_total", "info": "_info"}
    for family in registry.collect():
        if family.name.startswith("respawn_"):
            exported = family.name + suffix.get(family.type, "")
            assert f"`{exported}" in docs, exported
