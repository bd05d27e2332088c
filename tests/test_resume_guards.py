"""No silent change of course on resume: a run whose checkpoints are gone, or resumed on another number
of ranks, is refused in one line before the model loads, and goes on only with resume_force=true, saying
what changes. Real `python -m pricer.train` (and torchrun) processes."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_cli_in_process
from test_distributed import run_torchrun
from test_one_writer import interrupted_run
from test_resilience import RUN, Training

pytestmark = pytest.mark.slow


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_resume_after_the_checkpoints_were_removed_is_refused_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:
    run_dir = interrupted_run(tmp_path)
    saved = json.loads((run_dir / "run.json").read_text())["last_checkpoint"]
    shutil.rmtree(run_dir / "checkpoints")
    before = (run_dir / "run.json").read_text()

    out = run_cli_in_process([*RUN, f"output_root={tmp_path}", f"resume={run_dir}"], monkeypatch, capsys)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert errors(out.stderr) == [f"error: resume={run_dir} saved checkpoint-{saved}, but {run_dir / 'checkpoints'} holds no "
                                  "complete checkpoint (removed or lost), so it would train again from step 0: restore the "
                                  "checkpoints, or pass resume_force=true to train it again from step 0 in this run"]
    assert (run_dir / "run.json").read_text() == before  # nothing written before the refusal

    forced = run_cli([*RUN, f"output_root={tmp_path}", f"resume={run_dir}", "resume_force=true"])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "resume_force=true: going on" in forced.stdout + forced.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["resumed"], meta["trained"]["train_steps"]) == ("finished", 1, 24)


def test_a_one_process_run_resumed_on_two_ranks_is_refused_unless_forced(tmp_path: Path) -> None:
    run_dir = interrupted_run(tmp_path)
    args = [*RUN, f"output_root={tmp_path}", f"resume={run_dir}"]
    refused = run_torchrun(args, nproc=2, env={})
    assert refused.returncode != 0
    expected = (f"error: resume={run_dir} trained on 1 rank(s), this launch has 2: the global batch (per device x accumulation "
                "x ranks) would change by 2/1 mid-run: resume it on 1 rank(s), or pass resume_force=true to go on at the new batch")
    assert expected in errors(refused.stderr), refused.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"

    forced = run_torchrun([*args, "resume_force=true"], nproc=2, env={})
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "would change by 2/1 mid-run; resume_force=true: going on" in forced.stdout + forced.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["world_size"], meta["resumed"]) == ("finished", 2, 1)


@pytest.mark.gpu
def test_batch_auto_is_measured_once_per_run_and_kept_on_resume(tmp_path: Path) -> None:
    """batch=auto's pick is stored in run.json and reused by a resume on another card (here: another
    memory budget), so the schedule and the batches skipped on resume stay the first attempt's."""
    if not torch.cuda.is_available():
        pytest.skip("batch=auto measures CUDA memory")
    gpu = ["hardware=h100", "hardware.per_device_train_batch_size=auto", "hardware.liger=false", "tracking=none"]
    run_dir = tmp_path / "runs" / "auto"
    first = Training([*RUN, *gpu, "hardware.memory_gib=4", f"output_root={tmp_path}", f"hydra.run.dir={run_dir}"])
    first.wait_for_step(10)
    first.proc.send_signal(signal.SIGTERM)
    code, err = first.finish()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    picked = json.loads((run_dir / "run.json").read_text())["auto_batch_size"]

    again = run_cli([*RUN, *gpu, "hardware.memory_gib=16", f"output_root={tmp_path}", f"resume={run_dir}"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"per_device_train_batch_size=auto: {picked}, as the run's first attempt picked it" in again.stdout + again.stderr
    assert "batch=auto: batch" not in again.stdout + again.stderr  # not measured again
    assert json.loads((run_dir / "run.json").read_text())["auto_batch_size"] == picked
