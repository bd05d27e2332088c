"""One live writer per run (pricer.run_lock), with real `python -m pricer.train` processes:
a second resume of a run that trains is refused naming its owner, two resumes started together
leave one writer, and two `resume=auto` started together never take one run."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli_in_process
from test_resilience import RUN, Training

pytestmark = pytest.mark.slow
LONG = [a if not a.startswith("training.max_steps=") else "training.max_steps=5000" for a in RUN]  # stopped by the test


def interrupted_run(tmp_path: Path) -> Path:
    """A run stopped by SIGTERM at a saved checkpoint, as a preempted job leaves it."""
    first = Training([*RUN, f"output_root={tmp_path}", f"hydra.run.dir={tmp_path}/runs/first"])
    first.wait_for_step(10)
    first.proc.send_signal(signal.SIGTERM)
    code, err = first.finish()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    return tmp_path / "runs" / "first"


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pricer.train", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_resume_of_a_run_that_trains_is_refused_naming_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "runs" / "live"
    training = Training([*LONG, f"output_root={tmp_path}", f"hydra.run.dir={run_dir}"])
    deadline = time.monotonic() + 240  # training: past the claim (run.json, under the run's lock) and its first step
    while not re.search(rb"\| *[1-9]\d*/5000 \[", training.err):
        assert time.monotonic() < deadline and training.proc.poll() is None, training.err.decode()[-2000:]
        time.sleep(0.1)
    out = run_cli_in_process([*RUN, f"output_root={tmp_path}", f"resume={run_dir}"], monkeypatch, capsys)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(errors) == 1 and f"is being trained by pid {training.proc.pid} on host " in errors[0], errors
    assert json.loads((run_dir / "run.json").read_text())["pid"] == training.proc.pid  # untouched by the refused one

    training.proc.send_signal(signal.SIGTERM)  # the owner stops: now a resume may take the run
    code, err = training.finish()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["pid"]) == ("interrupted", training.proc.pid)


def test_two_resumes_started_together_leave_one_writer(tmp_path: Path) -> None:
    run_dir = interrupted_run(tmp_path)
    procs = [start([*RUN, f"output_root={tmp_path}", f"resume={run_dir}", f"hydra.run.dir={tmp_path}/runs/attempt{k}"])
             for k in range(2)]
    outs = [(proc.wait(300), proc.stdout.read()) for proc in procs]
    codes = sorted(code for code, _ in outs)
    assert codes == [0, 2], [out[-1500:] for _, out in outs]
    (winner,) = [proc for proc, (code, _) in zip(procs, outs, strict=True) if code == 0]
    (refusal,) = [out for code, out in outs if code == 2]
    # refused while the winner trains, or (had it been slow to start) once the winner has finished the run
    assert re.search(rf"error: resume={re.escape(str(run_dir))} (is being trained by pid {winner.pid} on host |already finished)",
                     refusal), refusal
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["resumed"], meta["pid"]) == ("finished", 1, winner.pid)


def test_two_resume_auto_started_together_never_take_one_run(tmp_path: Path) -> None:
    """The requeued-job race: both look for the interrupted run at once; one continues it, the other
    says it starts a new run and does."""
    run_dir = interrupted_run(tmp_path)
    args = [*RUN, f"output_root={tmp_path}", "resume=auto"]
    procs = [start([*args, f"hydra.run.dir={tmp_path}/runs/attempt{k}"]) for k in range(2)]
    outs = [(proc.wait(300), proc.stdout.read()) for proc in procs]
    assert [code for code, _ in outs] == [0, 0], [out[-1500:] for _, out in outs]
    continued = [out for _, out in outs if f"resume=auto: continuing {run_dir}" in out]
    fresh = [out for _, out in outs if "resume=auto: no unfinished run with these overrides is free" in out]
    assert len(continued) == 1 and len(fresh) == 1, [out[-1500:] for _, out in outs]
    assert json.loads((run_dir / "run.json").read_text())["resumed"] == 1
    new_runs = [p.parent for p in (tmp_path / "runs").glob("attempt*/run.json")]
    assert len(new_runs) == 1 and json.loads((new_runs[0] / "run.json").read_text())["status"] == "finished"
