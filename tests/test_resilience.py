"""Runs that survive: kill, preempt, flaky or absent Hub. Faults are injected for real:
signals to a real training process, HTTP errors from the local Hub stand-in."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli, run_cli_in_process
from safetensors.torch import load_file

RUN = [
    "experiment=demo",
    "training.max_steps=24",
    "training.logging_steps=4",
    "training.save_steps=8",
    "training.save_total_limit=2",
    "evaluation.test_items=20",
]


class Training:
    """A `python -m pricer.train` process whose progress bar we can watch."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pricer.train", *args], cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stderr.read1(4096):
            self.err += chunk

    def wait_for_step(self, step: int, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            done = [int(n) for n in re.findall(rb"\| *(\d+)/24 \[", self.err)]
            if done and max(done) >= step:
                return max(done)
            time.sleep(0.1)
        raise AssertionError(f"training never reached step {step}:\n{self.err.decode()[-2000:]}")

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        self.proc.wait(timeout)
        self.reader.join(30)  # the pipe drained to its end
        return self.proc.returncode, self.err.decode()


def logged_losses(checkpoint: Path) -> dict[int, float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.mark.slow
def test_sigterm_saves_exits_interrupted_and_resume_auto_continues(tmp_path: Path) -> None:
    args = [*RUN, "tracking=wandb", f"output_root={tmp_path}"]
    first = Training([*args, f"hydra.run.dir={tmp_path}/runs/first"])
    first.wait_for_step(10)
    first.proc.send_signal(signal.SIGTERM)
    code, err = first.finish()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    match = re.search(r"error: interrupted by SIGTERM at step (\d+): checkpoint saved", err)
    assert match, err[-2000:]
    step = int(match.group(1))
    run_dir = tmp_path / "runs" / "first"
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    name = json.loads((run_dir / "run.json").read_text())["run_name"]

    again = run_cli([*args, "resume=auto", f"hydra.run.dir={tmp_path}/runs/second"])
    assert again.returncode == 0, again.stderr[-2000:]
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["run_name"], meta["resumed"]) == ("finished", name, 1)
    assert f"continuing from {run_dir / 'checkpoints' / f'checkpoint-{step}'}" in again.stdout + again.stderr
    losses = logged_losses(run_dir / "checkpoints" / "checkpoint-24")
    assert sorted(losses) == [4, 8, 12, 16, 20, 24]  # one unbroken curve across the interruption
    assert json.loads((run_dir / "adapter" / "metrics.json").read_text())["train_steps"] == 24
    assert not (tmp_path / "runs" / "second" / "adapter").exists()  # artifacts stay in the run's own dir
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and len({path.name.rsplit("-", 1)[1] for path in attempts}) == 1  # one W&B run, resumed


@pytest.mark.slow
def test_a_signal_to_every_process_of_the_job_as_slurm_sends_it_still_saves_and_resumes_the_wandb_run(
        tmp_path: Path) -> None:
    """SLURM signals every process of a job on preemption or at its time limit, W&B's service process
    (wandb-core) too, which exits on SIGTERM: every W&B call after it raises ConnectionResetError. Here the
    service gets the SIGTERM first, then the run, as a job's processes do. The run still saves at this
    step and ends interrupted (before: the Trainer's W&B callback failed the run), says once what W&B
    missed, and resume=auto finishes it in the same W&B run."""
    import psutil

    args = [*RUN, "tracking=wandb", f"output_root={tmp_path}"]
    first = Training([*args, f"hydra.run.dir={tmp_path}/runs/first"])
    first.wait_for_step(6)
    job = psutil.Process(first.proc.pid)
    (service,) = [proc for proc in job.children(recursive=True) if proc.name() == "wandb-core"]
    service.send_signal(signal.SIGTERM)
    while service.is_running() and service.status() != psutil.STATUS_ZOMBIE:  # it exits within milliseconds
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
    code, err = first.finish()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    match = re.search(r"error: interrupted by SIGTERM at step (\d+): checkpoint saved", err)
    assert match, err[-3000:]
    run_dir = tmp_path / "runs" / "first"
    assert (run_dir / "checkpoints" / f"checkpoint-{match.group(1)}" / "trainer_state.json").exists()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    log = (run_dir / "train.log").read_text()
    assert log.count("W&B's service process is gone (ConnectionResetError") == 1, log[-3000:]
    assert f"W&B run {meta['wandb_id']} gets no more from this attempt" in log

    again = run_cli([*args, "resume=auto", f"hydra.run.dir={tmp_path}/runs/second"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert [path.name.rsplit("-", 1)[1] for path in attempts] == [meta["wandb_id"]] * 2  # one W&B run, resumed


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [*RUN, f"output_root={tmp_path}"]
    straight = run_cli([*args, f"hydra.run.dir={tmp_path}/straight"])
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = Training([*args, f"hydra.run.dir={tmp_path}/killed"])
    killed.wait_for_step(13)  # checkpoint-8 is on disk, maybe checkpoint-16 half-written
    killed.proc.kill()
    killed.finish()
    resumed = run_cli([*args, f"resume={tmp_path}/killed", f"hydra.run.dir={tmp_path}/resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    expected = logged_losses(tmp_path / "straight" / "checkpoints" / "checkpoint-24")
    got = logged_losses(tmp_path / "killed" / "checkpoints" / "checkpoint-24")
    # Exactly: the checkpoint restores the optimizer, scheduler and RNG states (dropout) and the sampler
    # skips the batches already seen, and the CPU path (bitsandbytes' CPU kernels, one thread count) is
    # deterministic, so the resumed run repeats the uninterrupted one bit for bit.
    assert got == expected
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_flaky_hub_loses_nothing(tmp_path: Path, hub_stand_in) -> None:
    """A dropped connection, then 429s: training goes on and every checkpoint lands, in order."""
    # every push starts with create_repo, which huggingface_hub does not retry itself: pricer must
    hub_stand_in.fault_match = "/api/repos/create"
    hub_stand_in.drop_first_n, hub_stand_in.fail_first_n, hub_stand_in.fail_status = 1, 3, 429
    run_dir = tmp_path / "run"
    out = run_cli(
        [*RUN, "hub.push=true", "hub.push_wait_s=0.2", f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"],
        env={"HF_HUB_OFFLINE": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "push checkpoint-8 failed (attempt 4/5)" in out.stdout + out.stderr
    assert json.loads((run_dir / "pushed.json").read_text()) == [8, 16, 24]
    (repo_id,) = hub_stand_in.repos
    messages = [c.message for c in hub_stand_in.commits(repo_id)]
    assert [m for m in messages if m.startswith("Training in progress")] == [
        f"Training in progress, step {s}" for s in (8, 16, 24)
    ]
    assert messages[-1] == "final adapter, tokenizer and model card"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-24"]


@pytest.mark.slow
def test_hub_down_all_run_then_pricer_push_sends_everything(tmp_path: Path, hub_stand_in) -> None:
    hub_stand_in.fail_first_n, hub_stand_in.fail_status = 10**9, 503
    run_dir = tmp_path / "run"
    out = run_cli(
        [*RUN, "hub.push=true", "hub.hf_user=pricer-tester", "hub.push_attempts=2", "hub.push_wait_s=0.05",
         f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"],
        env={"HF_HUB_OFFLINE": "0"},
    )
    # a dead Hub never kills training: the run trains and scores to the end, then exits 1 for its final push
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"finish it with `python -m pricer.push {run_dir}`" in out.stderr
    # save_total_limit=2, but nothing was pushed, so nothing was deleted
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-24", "checkpoint-8"]
    assert not hub_stand_in.repos

    hub_stand_in.fail_first_n = 0  # the network is back
    push = subprocess.run([sys.executable, "-m", "pricer.push", str(run_dir), "--wait-s", "0.05"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr[-2000:]
    assert "pushed checkpoint-8, checkpoint-16, checkpoint-24, adapter" in push.stdout
    (repo_id,) = hub_stand_in.repos
    assert hub_stand_in.repos[repo_id].private
    files = hub_stand_in.files(repo_id)
    assert files["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    again = subprocess.run([sys.executable, "-m", "pricer.push", str(run_dir)], cwd=ROOT, capture_output=True, text=True)
    assert "nothing: all up to date" in again.stdout


@pytest.mark.slow
def test_sigterm_just_after_training_is_held_for_the_evaluation_phase(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The signal lands in the instant between training's end and scoring's start (here: the moment run.json
    records the finished training). That instant once belonged to the handler outside training, and the run
    ended "outside training" although its adapter was saved; one handler now spans training and scoring."""
    import pricer.fit

    real_write_run = pricer.fit.write_run

    def write_then_signal(run_dir: Path, **fields) -> None:
        real_write_run(run_dir, **fields)
        if "trained" in fields:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pricer.fit, "write_run", write_then_signal)
    run_dir, handler_before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    args = ["experiment=demo", "training.max_steps=8", "training.save_steps=8", "evaluation.test_items=20"]
    out = run_cli_in_process([*args, f"output_root={tmp_path}", f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-2000:]
    assert "error: interrupted by SIGTERM at step 8: training finished, adapter saved" in out.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["trained"]["train_steps"] == 8
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not (run_dir / "adapter" / "metrics.json").exists(), "scoring never started"
    assert signal.getsignal(signal.SIGTERM) == handler_before, "the run's handlers are gone after it"


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_resumes_the_evaluation_only(tmp_path: Path) -> None:
    """Training is done when the signal comes: exit 143, run.json says interrupted and trained; resume=auto
    loads the saved adapter and evaluates, training no step more (the last checkpoint stays step 24)."""
    slow_eval = ["evaluation.test_items=300", "evaluation.batch_tokens=256"]  # ~60 small batches: seconds to hit
    args = [*[a for a in RUN if not a.startswith("evaluation.test_items=")], *slow_eval, f"output_root={tmp_path}"]
    run_dir = tmp_path / "runs" / "first"
    first = Training([*args, f"hydra.run.dir={run_dir}"])
    first.wait_for_step(24)  # the last step: the signal lands in the final save or the evaluation
    first.proc.send_signal(signal.SIGTERM)
    code, err = first.finish()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "error: interrupted by SIGTERM at step 24: training finished, adapter saved" in err
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["trained"]["train_steps"] == 24
    assert not (run_dir / "adapter" / "metrics.json").exists()
    adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()

    again = run_cli([*args, "resume=auto", f"hydra.run.dir={tmp_path}/runs/second"])
    assert again.returncode == 0, again.stderr[-2000:]
    output = again.stdout + again.stderr
    assert "training ended at step 24 in an earlier attempt: evaluating its adapter only" in output
    assert "continuing from" not in output and "/24 [" not in output, "not one step trained"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-24"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert metrics["train_steps"] == 24 and metrics["test/items"] == 300
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    from pricer.evaluate import main as evaluate_cli  # the resumed score is the saved adapter's own

    rescored = evaluate_cli([str(run_dir), "--out", str(tmp_path / "eval")])
    assert rescored["test/price_error"] == pytest.approx(metrics["test/price_error"], rel=1e-5)
