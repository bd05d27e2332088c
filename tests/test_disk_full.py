"""A disk that fills up at a checkpoint save: one line naming the dir and the free space, run.json says
failed, no temp file left, the earlier checkpoint intact, and the run resumes once space is freed.
Real training on a real full filesystem (a small tmpfs; mounting one needs root, as in CI)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from test_resilience import RUN, Training

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem refuses: what a neighbour's job does to a shared scratch disk."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resumes_once_freed(small_disk: Path) -> None:
    run_dir = small_disk / "runs" / "full"
    training = Training([*RUN, f"output_root={small_disk}", f"hydra.run.dir={run_dir}"])
    training.wait_for_step(9)  # checkpoint-8 saved
    fill(small_disk)
    code, err = training.finish()
    errors = re.findall(r"error: [^\r\n]*", err)  # the progress bar's last line ends without a newline
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: no space left on the disk of {run_dir} ("), err[-3000:]
    assert f"`python -m pricer.train resume={run_dir}`" in errors[0]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not list(run_dir.glob("*.tmp"))
    assert (run_dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").exists()

    os.remove(small_disk / "filler")
    again = run_cli([*RUN, f"output_root={small_disk}", f"resume={run_dir}", f"hydra.run.dir={small_disk}/attempt2"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing from {run_dir / 'checkpoints' / 'checkpoint-8'}" in again.stdout + again.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["trained"]["train_steps"]) == ("finished", 24)
    shutil.rmtree(run_dir)  # before the fixture unmounts
