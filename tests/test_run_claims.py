"""One run, one dir, one status: same-second starts, failures after the claim, resume=auto's choices,
and bad input that leaves nothing behind. Each runs the real `python -m pricer.train`."""

import json
import multiprocessing
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, run_cli_in_process

from pricer import run_lock, run_names
from pricer.resume import ResumeError, owner, take_resumable, write_run

NAMES = {"run_name": "2024-09-13_13.04.39", "project_run_name": "pricer-2024-09-13_13.04.39", "repo_id": None,
         "wandb_id": "abcd1234"}  # what a claim writes into run.json
QUICK = ["experiment=demo", "training.max_steps=2", "training.save_steps=2", "evaluation.test_items=5"]


def _claim_in_child(root: str, start: str, queue) -> None:
    queue.put(run_names.claim_run_dir(root, datetime.fromisoformat(start)))


def test_runs_started_in_the_same_second_claim_distinct_dirs(tmp_path: Path) -> None:
    """Four processes claiming at the very same start time get four dirs, named like their runs."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = "2024-09-13T13:04:39"
    procs = [ctx.Process(target=_claim_in_child, args=(str(tmp_path), start, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    dirs = sorted(Path(queue.get(timeout=60)) for _ in procs)
    for proc in procs:
        proc.join(60)
    names = [d.name for d in dirs]
    assert names == ["2024-09-13_13.04.39", "2024-09-13_13.04.39_1", "2024-09-13_13.04.39_2", "2024-09-13_13.04.39_3"]
    assert all(d.is_dir() and d.parent == tmp_path / "runs" for d in dirs)
    assert {run_names.run_start(d) for d in dirs} == {datetime.fromisoformat(start)}


@pytest.mark.slow
def test_two_cli_runs_at_once_keep_their_own_dir_config_and_results(tmp_path: Path) -> None:
    """The repro of two runs started together: each dir holds its own config, run.json and adapter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two torch processes on a 2-core host: one thread each
    procs = [subprocess.Popen([sys.executable, "-m", "pricer.train", *QUICK, f"seed={seed}", f"output_root={tmp_path}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    seeds = set()
    for run_dir in runs:
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["run_name"] == run_dir.name and meta["status"] == "finished"
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        seeds |= {line.split("=")[1] for line in overrides.splitlines() if "seed=" in line}
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
        config = (run_dir / ".hydra" / "config.yaml").read_text()
        assert f"seed: {overrides.split('seed=')[1].split()[0]}" in config, "the dir's config is its own run's"
    assert seeds == {"1", "2"}


def test_a_run_that_fails_after_its_claim_is_marked_failed_and_auto_leaves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """The model cannot load (a corrupt weights file): run.json says failed, and resume=auto starts anew.
    The real command in this process (run_cli_in_process): it fails at the model's config, before any training."""
    model_dir = tmp_path / "broken-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{not json")
    args = [*QUICK, "model.build_tiny=false", f"model.pretrained_model_name_or_path={model_dir}", f"output_root={tmp_path}"]
    out = run_cli_in_process(args, monkeypatch, capsys)
    assert out.returncode != 0
    (failed,) = (tmp_path / "runs").glob("*/run.json")
    assert json.loads(failed.read_text())["status"] == "failed"
    overrides = json.loads(failed.read_text())["overrides"]
    assert take_resumable("auto", tmp_path, overrides) is None


def test_resume_auto_skips_owned_runs_failed_runs_and_corrupt_files(tmp_path: Path) -> None:
    """Of five runs with the same overrides only the unfinished one that no live process owns is
    continued, and resume=auto takes its lock. The owner is a real second process holding the lock."""
    overrides = ["experiment=demo"]
    runs = {name: tmp_path / "runs" / name for name in ("dead", "alive", "failed", "finished", "corrupt")}
    for name, run_dir in runs.items():
        run_dir.mkdir(parents=True)
        status = {"failed": "failed", "finished": "finished"}.get(name, "running")
        write_run(run_dir, overrides=overrides, status=status, started=f"2024-09-13T13:0{len(name)}:00", **NAMES, **owner())
    (runs["corrupt"] / "run.json").write_text('{"status": "running", "overr')
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from pricer import run_lock; "
                               f"assert run_lock.acquire(Path({str(runs['alive'])!r})); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert take_resumable("auto", tmp_path, overrides) == runs["dead"]  # alive is newer, but owned
        assert run_lock.holds(runs["dead"])
        assert take_resumable("auto", tmp_path, overrides) == runs["dead"]  # this process's own claim
        run_lock.release(runs["dead"])
        with pytest.raises(ResumeError, match=rf"resume={runs['alive']} is being trained by pid {holder.pid} on host "):
            take_resumable(str(runs["alive"]), tmp_path, overrides)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert take_resumable("auto", tmp_path, overrides) == runs["alive"]  # its owner died: the kernel let go
    run_lock.release(runs["alive"])


BAD = [
    (["lora.r=0"], "lora.r=0 must be a positive integer"),
    (["optimizer.learning_rate=fast"], "optimizer.learning_rate='fast' must be a number"),
    (["quant.bnb_4bit_quant_type=nf5"], "quant.bnb_4bit_quant_type=nf5 is not one of nf4, fp4"),
    (["training.max_steps=0"], "train nothing"),
    (["optimized_metric=val/price_error", "evaluation.val_items=5000"], "evaluation.val_items=5000 leaves no training items"),
    (["data=local", "data.data_files.train=/nonexistent/train.jsonl", "data.data_files.test=/nonexistent/test.jsonl"],
     "data.data_files.train=/nonexistent/train.jsonl: no such file"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_and_leaves_no_run_dir(tmp_path: Path, overrides: list[str], message: str,
                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The real command in this process (run_cli_in_process): refused in validation or the data check."""
    out = run_cli_in_process(["experiment=demo", *overrides, f"output_root={tmp_path}"], monkeypatch, capsys)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Loading weights" not in out.stderr, "refused before any model load"
    assert not list((tmp_path / "runs").glob("*")), "no orphan run dir"


def fake_checkpoint(run_dir: Path, step: int, truncate: bool = False, r: int = 16) -> Path:
    """A checkpoint as the Trainer leaves it, as far as resuming reads it."""
    import torch
    from safetensors.torch import save_file

    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (checkpoint / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2 * r, "target_modules": ["v_proj", "q_proj"]}))
    weights = checkpoint / "adapter_model.safetensors"
    save_file({"lora_A": torch.zeros(r, 64)}, str(weights))
    if truncate:  # a full disk mid-copy: the header promises more bytes than the file has
        weights.write_bytes(weights.read_bytes()[:-100])
    return checkpoint


def test_a_truncated_adapter_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    from pricer.resume import complete_checkpoints, drop_incomplete_checkpoints

    fake_checkpoint(tmp_path, 8)
    fake_checkpoint(tmp_path, 16, truncate=True)
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-8"]
    assert [p.name for p in drop_incomplete_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-16"]


def test_resuming_with_another_lora_shape_is_one_line_before_any_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "runs" / "r16"
    fake_checkpoint(run_dir, 8, r=16)
    write_run(run_dir, **NAMES | {"run_name": "r16"}, status="interrupted", overrides=["experiment=demo"])
    out = run_cli_in_process(["experiment=demo", "lora.r=8", f"resume={run_dir}", f"output_root={tmp_path}"], monkeypatch,
                             capsys)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: resume={run_dir} trained with lora.r=16, not 8: resume with lora.r=16 "
                      "(or start a new run without resume=)"], out.stderr[-2000:]
    assert "Loading weights" not in out.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r16"], "the refused attempt left no dir"


def test_an_output_root_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "outputs"
    not_a_dir.write_text("a file, not a folder")
    out = run_cli(["experiment=demo", f"output_root={not_a_dir}"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"error: output_root={not_a_dir} cannot hold runs (NotADirectoryError: Not a directory): "
                     "pass output_root=A_WRITABLE_FOLDER"], out.stderr[-2000:]
    assert not_a_dir.read_text() == "a file, not a folder"
