"""The error table of docs/cli.md, a test per row: each case ends in one line on stderr and its exit
code, never a traceback. Cases that involve an API server use the real one (a closed port for the
unreachable one), except the 5xx row, which the real server does not answer on demand."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from devcluster.controlplane import ControlPlane, free_port
from respawn_cli import __main__ as cli
from respawn_cli.errors import Exit
from tests.support import REPO
from tests.support.deploy import service_account_kubeconfig
from tests.support.outputs import write_steps

pytestmark = pytest.mark.timeout(120)

RESPAWN = REPO / ".venv" / "bin" / "respawn"


def fails(capsys: pytest.CaptureFixture[str], code: Exit, *args: str) -> str:
    """Run the CLI in-process; assert the exit code and a single-line message; return the message."""
    assert cli.main(list(args)) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    return one_line(captured.err)


def one_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("respawn"), err
    return err.strip()


def kubeconfig_for(path: Path, server: str, **user: str) -> Path:
    """A kubeconfig for `server` that skips TLS verification (only reachability matters here)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": user or {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    return path


# -- usage, version ------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == Exit.OK
    assert capsys.readouterr().out == f"respawn {metadata.version('respawn')}\n"


def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid choice: 'bogus'" in fails(capsys, Exit.USAGE, "bogus")
    assert "(see respawn status --help)" in fails(capsys, Exit.USAGE, "status")
    assert "--x: invalid choice: 'date'" in fails(
        capsys, Exit.USAGE, "plot", "--output-dir", ".", "--x", "date"
    )


def test_an_unknown_plot_suffix_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_steps(tmp_path, 0, [(None, range(1, 5))])
    for name in ("loss.jpg", "loss"):
        message = fails(capsys, Exit.USAGE, "plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / name))
        assert "the format comes from the suffix, one of .png, .svg, .pdf" in message
        assert not (tmp_path / name).exists()


# -- kubeconfig ----------------------------------------------------------------------------------


def test_no_kubeconfig_outside_a_pod(tmp_path: Path) -> None:
    """The installed command, as a user runs it: no $KUBECONFIG, no ~/.kube/config, not in a pod."""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [str(RESPAWN), "status", "llm"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == Exit.NO_CONFIG
    assert result.stdout == ""
    assert one_line(result.stderr) == (
        "respawn: no kubeconfig ($KUBECONFIG, ~/.kube/config or --kubeconfig) and not running in a pod"
    )


def test_a_kubeconfig_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    message = fails(capsys, Exit.NO_CONFIG, "status", "llm", "--kubeconfig", str(missing))
    assert message == f"respawn: kubeconfig {missing} cannot be used: no such file"


@pytest.mark.parametrize(
    "text",
    ["clusters: [\n", "just a string\n", "apiVersion: v1\nkind: Config\n"],
    ids=["yaml", "scalar", "empty"],
)
def test_a_malformed_kubeconfig(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config"
    bad.write_text(text)
    assert f"respawn: kubeconfig {bad} cannot be used: " in fails(
        capsys, Exit.NO_CONFIG, "status", "llm", "--kubeconfig", str(bad)
    )


# -- the API server ------------------------------------------------------------------------------


def test_an_api_server_that_does_not_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    config = kubeconfig_for(tmp_path / "config", server)
    message = fails(capsys, Exit.UNREACHABLE, "status", "llm", "--kubeconfig", str(config))
    assert message.startswith(f"respawn: cannot reach the API server at {server}: ")
    assert "refused" in message


def test_a_token_the_api_server_does_not_accept(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = control_plane.write_kubeconfig(tmp_path / "config", user="x", token="not-a-token")
    message = fails(capsys, Exit.DENIED, "status", "llm", "-n", "default", "--kubeconfig", str(config))
    assert message == "respawn: not authenticated (401): Unauthorized"


def test_a_user_who_may_not_read_training_jobs(
    control_plane: ControlPlane,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.CoreV1Api(api_client).create_namespaced_service_account(
        namespace, {"metadata": {"name": "nobody"}}
    )
    config = service_account_kubeconfig(control_plane, api_client, namespace, "nobody", tmp_path / "config")
    message = fails(capsys, Exit.DENIED, "status", "llm", "-n", namespace, "--kubeconfig", str(config))
    assert message.startswith("respawn: not allowed (403): ")
    assert f'User "system:serviceaccount:{namespace}:nobody" cannot get resource "trainingjobs"' in message


def test_a_job_that_does_not_exist(
    namespace: str, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = fails(
        capsys, Exit.NOT_FOUND, "status", "nope", "-n", namespace, "--kubeconfig", str(kubeconfig)
    )
    assert message == f"respawn: TrainingJob {namespace}/nope not found"


class _Failing(http.server.BaseHTTPRequestHandler):
    """An API server in trouble: 503 with a Status body, as kube-apiserver answers when etcd is gone."""

    def do_GET(self) -> None:
        body = json.dumps(
            {"kind": "Status", "status": "Failure", "message": "etcdserver: no leader", "code": 503}
        )
        self.send_response(503, "Service Unavailable")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_an_api_server_error(failing_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = kubeconfig_for(tmp_path / "config", failing_server)
    message = fails(capsys, Exit.API_ERROR, "status", "llm", "-n", "x", "--kubeconfig", str(config))
    assert message == "respawn: the API server answered 503 Service Unavailable: etcdserver: no leader"


# -- files ---------------------------------------------------------------------------------------


def test_status_of_an_output_dir_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any API call: no kubeconfig is needed to be told."""
    missing = tmp_path / "nope"
    message = fails(capsys, Exit.BAD_INPUT, "status", "llm", "--output-dir", str(missing))
    assert message == f"respawn: --output-dir {missing}: not a directory"


def test_plot_of_paths_that_are_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    out = str(tmp_path / "x.png")
    assert fails(capsys, Exit.BAD_INPUT, "plot", "--output-dir", str(missing), "-o", out) == (
        f"respawn: {missing}: no such file or directory"
    )
    write_steps(tmp_path / "job", 0, [(None, range(1, 5))])
    assert fails(
        capsys,
        Exit.BAD_INPUT,
        "plot",
        "--output-dir",
        str(tmp_path / "job"),
        "--reference",
        str(missing),
        "-o",
        out,
    ) == (f"respawn: {missing}: no such file or directory")
    message = fails(
        capsys, Exit.BAD_INPUT, "plot", "--output-dir", str(tmp_path / "job"), "--rank", "3", "-o", out
    )
    assert message == f"respawn: no steps in {tmp_path / 'job' / 'log' / 'rank_3' / 'steps.jsonl'}"
    assert not Path(out).exists()


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff\xfe garbage\n{not json}\n[1, 2]\n",
        b'{"global_step": 1e3}\n{"global_step": "7"}\n{"global_step": true}\n',
        b'{"global_step": 100000000000000000000, "loss": 1}\n',
    ],
    ids=["bytes", "types", "out-of-range"],
)
def test_plot_of_a_log_without_a_usable_step(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log" / "rank_0" / "steps.jsonl"
    log.parent.mkdir(parents=True)
    log.write_bytes(content)
    message = fails(
        capsys, Exit.BAD_INPUT, "plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "x.png")
    )
    assert message == f"respawn: no steps in {log}"


def test_plot_skips_values_it_cannot_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 400-digit loss, a global step beyond 64 bits: lines as unusable as a torn one, not a crash."""
    path = write_steps(tmp_path, 0, [(None, range(1, 6))])
    with path.open("a") as f:
        f.write('{"global_step": 6, "loss": 1' + "0" * 400 + "}\n")
        f.write('{"global_step": -100000000000000000000}\n')
    assert cli.main(["plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "x.svg")]) == Exit.OK
    assert "1 starts, 0 failures" in capsys.readouterr().out


def test_plot_of_a_log_it_may_not_read_or_that_is_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log" / "rank_0" / "steps.jsonl"
    log.mkdir(parents=True)  # a directory where the log should be
    out = str(tmp_path / "x.png")
    assert fails(capsys, Exit.BAD_INPUT, "plot", "--output-dir", str(tmp_path), "-o", out) == (
        f"respawn: {log}: Is a directory"
    )
    log.rmdir()
    os.mkfifo(log)  # never blocks (safefs), never read
    assert "is not a regular file (a FIFO)" in fails(
        capsys, Exit.BAD_INPUT, "plot", "--output-dir", str(tmp_path), "-o", out
    )
    log.unlink()
    write_steps(tmp_path, 0, [(None, range(1, 5))])
    if os.geteuid() != 0:  # root reads through any mode
        log.chmod(0)
        assert "Permission denied" in fails(
            capsys, Exit.BAD_INPUT, "plot", "--output-dir", str(tmp_path), "-o", out
        )


def test_plot_to_a_place_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_steps(tmp_path, 0, [(None, range(1, 5))])
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = fails(
        capsys, Exit.CANNOT_WRITE, "plot", "--output-dir", str(tmp_path), "-o", str(blocker / "x.png")
    )
    assert message.startswith(f"respawn: cannot write {blocker / 'x.png'}: ")
    (tmp_path / "dir.png").mkdir()
    message = fails(
        capsys, Exit.CANNOT_WRITE, "plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "dir.png")
    )
    assert "Is a directory" in message


# -- the rest ------------------------------------------------------------------------------------


def test_a_bug_is_one_line_and_exit_70(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr("respawn_cli.plot.plot", broken)
    write_steps(tmp_path, 0, [(None, range(1, 5))])
    args = ["plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "x.png")]
    assert fails(capsys, Exit.INTERNAL, *args) == (
        "respawn: internal error: RuntimeError: something unexpected "
        "(RESPAWN_DEBUG=1 shows the traceback; please report it)"
    )
    monkeypatch.setenv("RESPAWN_DEBUG", "1")
    assert cli.main(args) == Exit.INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_quiet_and_exit_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("respawn_cli.plot.plot", interrupted)
    assert cli.main(["plot", "--output-dir", str(REPO), "-o", "x.png"]) == Exit.INTERRUPTED
    assert capsys.readouterr().err == ""


def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path) -> None:
    """`respawn ... | head`: the installed command, its stdout a pipe nobody reads any more."""
    write_steps(tmp_path, 0, [(None, range(1, 5))])
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [str(RESPAWN), "plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "x.png")],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (Exit.OK, "")
    assert (tmp_path / "x.png").stat().st_size > 0, "the work was done; only its summary line was lost"


def test_the_table_in_the_docs_lists_every_exit_code() -> None:
    table = (REPO / "docs" / "cli.md").read_text()
    for code in Exit:
        assert f"| {code.value} |" in table, (
            f"docs/cli.md has no row for exit code {code.value} ({code.name})"
        )
