"""One run on two ranks (torchrun, gloo on CPU): one dir, one name, one Hub repo, one W&B run, one
evaluation, and the same training per step as one process with the doubled batch."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

FAKE_WANDB_KEY = "wandbsecret0123456789abcdef0123456789abcd"
# Few steps, few test items: the point is how the ranks share one run, not what it learns.
# lora_dropout=0: dropout masks are drawn per rank, so with dropout the two runs could not agree.
SHORT = [
    "experiment=demo",
    "training.max_steps=6",
    "training.logging_steps=1",
    "training.save_steps=6",
    "lora.lora_dropout=0",
    "evaluation.test_items=20",
]


def run_torchrun(args: list[str], nproc: int, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N --standalone -m pricer.train ...`, as a user launches it."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
         "-m", "pricer.train", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )


def logged_losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_two_ranks_are_one_run_with_the_big_batch_training(tmp_path: Path, hub_stand_in, tiny_model_dir) -> None:
    two_root, one_root = tmp_path / "two", tmp_path / "one"
    out = run_torchrun([*SHORT, "hardware.per_device_train_batch_size=4", "hub.push=true", "tracking=wandb",
                        f"output_root={two_root}"], nproc=2, env={"WANDB_API_KEY": FAKE_WANDB_KEY, "HF_HUB_OFFLINE": "0"})
    assert out.returncode == 0, out.stderr[-4000:]

    # One run: one dir (rank 1's Hydra files and log inside it), one claimed name, one run.json.
    (run_dir,) = (two_root / "runs").iterdir()
    assert [p.name for p in (two_root / ".run_names").iterdir()] == [run_dir.name]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [".hydra", "adapter", "checkpoints", "rank1",
                                                                          "wandb"]
    assert len(list(two_root.rglob("run.json"))) == 1
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and meta["run_name"] == run_dir.name
    rank0_log, rank1_log = (run_dir / "train.log").read_text(), (run_dir / "rank1" / "train.log").read_text()
    names = {re.search(r"run (\S+) -> ", log).group(1) for log in (rank0_log, rank1_log)}
    assert names == {meta["project_run_name"]}, "both ranks log the same run"
    assert "effective batch 8 = 4 per device x 1 accumulation x 2 devices" in rank0_log

    # Rank 0 alone tracks, pushes and scores: one W&B run (the id in run.json), one Hub repo, one evaluation.
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert wandb_run.name.endswith(f"-{meta['wandb_id']}")
    (repo_id,) = hub_stand_in.repos
    assert repo_id == meta["repo_id"]
    messages = [commit.message for commit in hub_stand_in.repos[repo_id].commits]
    assert sum("Training in progress" in m for m in messages) == 1, messages  # step 6, pushed once
    assert messages[-1] == "final adapter, tokenizer and model card"
    assert len(list(two_root.rglob("metrics.json"))) == 1
    assert "test     Error=" in rank0_log and "test     Error=" not in rank1_log
    assert "baseline Error=" not in rank1_log

    # The same training as one process with batch 8: the launcher's sampler draws the same seeded
    # order of items, rank r takes the r-th batch of 4 of each 8, and the Trainer normalises the loss
    # by the completion tokens of the whole global batch (average_tokens_across_devices), so the DDP
    # mean of the two ranks' gradients is the 8-item batch's gradient. Only float summation order differs.
    single = run_cli([*SHORT, "hardware.per_device_train_batch_size=8", f"output_root={one_root}"])
    assert single.returncode == 0, single.stderr[-4000:]
    (single_dir,) = (one_root / "runs").iterdir()
    two, one = logged_losses(run_dir), logged_losses(single_dir)
    assert len(two) == len(one) == 6
    assert two == pytest.approx(one, rel=1e-5), (two, one)
    assert two[-1] < two[0]
    scored = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert scored["test/items"] == 20


def sigterm_to_rank1_once(args: list[str], ready) -> str:
    """Launch `args` on two ranks under torchrun, SIGTERM rank 1 alone once `ready()` holds, and return
    the launcher's stderr after it exited non-zero (a scheduler may signal one process; torchrun itself
    forwards a signal to all). Fails if the ranks do not all end within 120 s of the signal."""
    import signal
    import time

    import psutil

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m",
           "pricer.train", *args]
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert launcher.poll() is None and time.monotonic() < deadline, "the moment to signal never came"
            time.sleep(0.05)
        (rank1,) = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                    if p.environ().get("RANK") == "1"]
        rank1.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0, stderr[-3000:]
    return stderr


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_one_checkpoint_and_resume_auto_finishes(tmp_path: Path,
                                                                                     tiny_model_dir) -> None:
    """Rank 1 alone gets a SIGTERM as checkpoint-10 appears, long before the last of 150 steps (a CI host
    under load once took 5 s to deliver it, past the end of a 60-step run). Both stop after the same step
    with one checkpoint, rank 0 records `interrupted`, and resume=auto on two ranks finds the run on rank 0,
    continues it from that checkpoint and finishes it."""
    args = ["experiment=demo", "training.max_steps=150", "training.save_steps=10", "training.logging_steps=10",
            "lora.lora_dropout=0", "evaluation.test_items=10", "hardware.per_device_train_batch_size=4",
            f"output_root={tmp_path}"]
    stderr = sigterm_to_rank1_once(args, lambda: bool(list(tmp_path.glob("runs/*/checkpoints/checkpoint-10/trainer_state.json"))))
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted", stderr[-3000:]
    steps = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")]
    stopped = max(steps)
    assert 10 < stopped < 150, steps
    for log in (run_dir / "train.log", run_dir / "rank1" / "train.log"):  # both ranks stopped after that step
        assert f"interrupted by SIGTERM at step {stopped}: checkpoint saved" in log.read_text(), log

    again = run_torchrun([*args, "resume=auto"], nproc=2, env={})
    assert again.returncode == 0, again.stderr[-4000:]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and meta["resumed"] == 1 and meta["trained"]["train_steps"] == 150
    assert (run_dir / "adapter" / "metrics.json").exists()
    attempt_dirs = [p for p in (tmp_path / "runs").iterdir() if p != run_dir]  # the resumed attempt's own logs
    assert len(attempt_dirs) == 1 and not (attempt_dirs[0] / "run.json").exists()
    assert f"continuing from {run_dir / 'checkpoints' / f'checkpoint-{stopped}'}" in (attempt_dirs[0] / "train.log").read_text()


@pytest.mark.slow
def test_sigterm_to_one_rank_while_rank_0_scores_ends_the_run_on_both_ranks(tmp_path: Path, tiny_model_dir) -> None:
    """Training ended (run.json has `trained`) and rank 0 scores the test set alone; rank 1, waiting for
    its numbers, alone gets a SIGTERM. Rank 1 must not end by itself: it would wait in a barrier while
    rank 0 waits in its broadcast of the scores, and the run would hang for the group's 2 h timeout (it
    did, before). Both ranks end the run as interrupted after training, nothing is published, and
    resume=auto only evaluates the saved adapter."""
    args = ["experiment=demo", "training.max_steps=20", "training.save_steps=10", "lora.lora_dropout=0",
            "evaluation.test_items=100", "hardware.per_device_train_batch_size=4", f"output_root={tmp_path}"]
    sigterm_to_rank1_once(args, lambda: any("trained" in p.read_text() for p in tmp_path.glob("runs/*/run.json")))
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["trained"]["train_steps"] == 20
    for log in (run_dir / "train.log", run_dir / "rank1" / "train.log"):
        assert "interrupted by SIGTERM at step 20: training finished, adapter saved" in log.read_text(), log
    assert not (run_dir / "adapter" / "config.yaml").exists()  # publish writes it once scoring ended on every rank

    again = run_torchrun([*args, "resume=auto"], nproc=2, env={})
    assert again.returncode == 0, again.stderr[-4000:]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and meta["resumed"] == 1
    scored = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert scored["test/items"] == 100
    (attempt_dir,) = [p for p in (tmp_path / "runs").iterdir() if p != run_dir]
    resumed_log = (attempt_dir / "train.log").read_text()
    assert "training ended at step 20 in an earlier attempt: evaluating its adapter only" in resumed_log
    assert "test     Error=" in resumed_log
