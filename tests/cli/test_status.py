"""`respawn status` against the real API server: a TrainingJob whose status is written through the
status subresource and whose Events are written the way the controller writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.adapters.kubewriter import KubeWriter
from respawn_cli.__main__ import main
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.manifests import training_job
from tests.support.outputs import commit, write_steps

STATUS: dict[str, Any] = {
    "phase": "Running",
    "attempt": 2,
    "restarts": 1,
    "uncountedRestarts": 1,
    "budgetUsed": 1,
    "resumedFromStep": 25,
    "lastFailure": {
        "time": "2026-01-01T10:05:00Z",
        "reason": "NodeLost",
        "action": "RestartJobIgnoreBudget",
        "message": "node node-0 NotReady for 30s",
        "pod": "st-a1-0",
        "node": "node-0",
        "counted": False,
    },
    "lastCompleteCheckpoint": {"step": 30, "epoch": 1, "file": "e2e_rank_0-1_30.ckpt"},
    "lastProgress": {"step": 33, "time": "2026-01-01T10:07:00Z", "attempt": 2},
    "startup": {"attempt": 2, "seconds": {"import": 4.25, "rendezvous": 1.5, "compile": 2.0}},
    "lastRecovery": {
        "attempt": 2,
        "reason": "NodeLost",
        "failedAt": "2026-01-01T10:05:00Z",
        "runningAt": "2026-01-01T10:05:03Z",
        "seconds": {"detect": 0.5, "teardown": 1.25, "podStart": 1.5, "import": 4.25},
        "totalSeconds": 12.75,
    },
    "checkpointInterval": {
        "seconds": 93.9,
        "steps": 188,
        "mtbfSeconds": 2205.0,
        "saveSeconds": 2.0,
        "failures": 2,
        "basis": "job",
    },
    "checkpointStore": {
        "step": 25,
        "pendingCommits": 1,
        "lagSeconds": 12.4,
        "failures": 2,
        "lastError": "SlowDown",
    },
}

# The controller's messages (controller/core/decide.py), in the order it writes them.
EVENTS = [
    ("Normal", "AttemptCreated", "attempt 0: 2 workers"),
    (
        "Warning",
        "Restarting",
        "Error on st-a0-1: container trainer exited with code 137; restart counted, attempt 1 in 0s",
    ),
    ("Normal", "AttemptCreated", "attempt 1: 2 workers"),
    (
        "Warning",
        "Restarting",
        "NodeLost on st-a1-0: node node-0 NotReady for 30s; restart not counted, attempt 2 in 1s",
    ),
    ("Normal", "AttemptCreated", "attempt 2: 2 workers"),
]


@pytest.fixture
def job(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api_client)
    body = training_job("st", maxRestarts=4)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    created["status"] = STATUS
    updated: dict[str, Any] = custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "st", created
    )
    assert updated["status"]["attempt"] == 2
    writer = KubeWriter(api_client)
    for type_, reason, message in EVENTS:
        writer.emit_event(updated, type_=type_, reason=reason, message=message)
    # Another object's event in the same namespace is not this job's.
    other = {**updated, "metadata": {**updated["metadata"], "name": "other", "uid": "x"}}
    writer.emit_event(other, type_="Warning", reason="Restarting", message="Error on other-a0-0: x")
    return updated


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Rank 0 and 1 of the same history: killed after step 17 (resumed from 15), lost its node after
    step 28 (resumed from 25); rank 1 has not committed step 30 yet."""
    out = tmp_path / "ns" / "st"
    for rank in (0, 1):
        write_steps(out, rank, [(None, range(1, 18)), (15, range(16, 29)), (25, range(26, 32 - rank))])
    commit(out, 0, [25, 30])
    commit(out, 1, [20, 25])
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_status_shows_attempts_failures_restarts_and_checkpoint(
    job: dict[str, Any], namespace: str, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys, "status", "st", "-n", namespace, "--kubeconfig", str(kubeconfig))
    lines = out.splitlines()
    assert lines[0] == f"TrainingJob {namespace}/st"
    assert "Phase:        Running (attempt 2)" in out
    assert "Restarts:     1 counted, 1 uncounted (budget 1/4 used)" in out
    assert "Checkpoint:   step 30 (e2e_rank_0-1_30.ckpt, epoch 1)" in out
    assert "Resumed from: step 25" in out
    assert "Progress:     step 33 at 2026-01-01T10:07:00Z (reported)" in out
    assert "Start-up:     attempt 2: import 4.2s, rendezvous 1.5s, compile 2.0s" in out
    assert (
        "Recovery:     12.8s from the failure to the first step of attempt 2 (NodeLost): "
        "detect 0.5s, teardown 1.2s, podStart 1.5s, import 4.2s"
    ) in out
    assert (
        "Interval:     checkpoint every 188 steps (~94s) suggested: MTBF 2205s over 2 failure(s) of "
        "this job, 2.00s per save"
    ) in out
    assert (
        "Store:        step 25 on every rank, 1 commit(s) waiting (oldest 12s); "
        "2 failed tries in a row: SlowDown" in out
    )
    assert "Last failure: NodeLost on st-a1-0 (node node-0), RestartJobIgnoreBudget" in out
    table = lines[lines.index(next(x for x in lines if x.startswith("ATTEMPT"))) :]
    rows = [row.split() for row in table[1:4]]
    assert rows[0][0] == "0" and rows[0][2:] == ["Failed", "Error", "st-a0-1", "-", "137", "counted"]
    assert rows[1][0] == "1" and rows[1][2:] == ["Failed", "NodeLost", "st-a1-0", "node-0", "-", "uncounted"]
    assert rows[2][0] == "2" and rows[2][2:] == ["Running"]
    assert all(row[1].startswith("20") for row in rows), "each attempt's creation time, from its event"
    assert "other-a0-0" not in out
    assert "Output dir" not in out


def test_status_with_output_dir_shows_checkpoints_per_rank_and_resumes(
    job: dict[str, Any],
    namespace: str,
    kubeconfig: Path,
    output_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(
        capsys,
        "status",
        "st",
        "-n",
        namespace,
        "--kubeconfig",
        str(kubeconfig),
        "--output-dir",
        str(output_dir),
    )
    section = out[out.index("Output dir") :].splitlines()
    assert section[0] == f"Output dir {output_dir}"
    assert "Complete on every rank: step 25 (e2e_rank_0-1_25.ckpt, e2e_rank_1-1_25.ckpt)" in section[1]
    rows = [line.split() for line in section if line.strip()[:1].isdigit()]
    assert rows == [
        ["0", "25,", "30", "30", "36", "31", "3"],
        ["1", "20,", "25", "25", "35", "30", "3"],
    ]
    assert "rank 0 start 1: resumed from step 15 (e2e_rank_0-1_15.ckpt) after step 17, 2 steps redone" in out
    assert "rank 1 start 2: resumed from step 25 (e2e_rank_1-1_25.ckpt) after step 28, 3 steps redone" in out


@pytest.mark.parametrize("flag", [["-o", "json"], ["--output=json"], ["--json"]], ids=" ".join)
def test_status_json(
    flag: list[str],
    job: dict[str, Any],
    namespace: str,
    kubeconfig: Path,
    output_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["status", "st", "-n", namespace, "--kubeconfig", str(kubeconfig), "--output-dir", str(output_dir)]
    report = json.loads(run(capsys, *args, *flag))
    assert (report["phase"], report["restarts"], report["uncounted_restarts"]) == ("Running", 1, 1)
    failures = [a["failure"] for a in report["attempts"]]
    assert failures[0]["exit_code"] == 137 and failures[0]["counted"] is True
    assert failures[1]["node"] == "node-0" and failures[2] is None
    assert report["output"]["complete_step"] == 25
    assert [len(r["resumes"]) for r in report["output"]["ranks"]] == [2, 2]


def test_status_text_is_the_default_output(
    job: dict[str, Any], namespace: str, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["status", "st", "-n", namespace, "--kubeconfig", str(kubeconfig)]
    assert run(capsys, *args, "-o", "text") == run(capsys, *args)
    assert main([*args, "-o", "yaml"]) == 2, "an output format it does not have"
    assert "invalid choice: 'yaml'" in capsys.readouterr().err
