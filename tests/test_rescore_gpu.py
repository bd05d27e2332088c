"""On a GPU, `python -m pricer.evaluate RUN_DIR` reproduces the run's own test report: same items,
batches, kernels and precision (the shared loader picks SDPA's kernels and Liger's for both, and keeps
the adapter in the bf16 it trained in; a process that kept cuDNN's, or upcast the adapter to fp32,
scored near-tied prices differently from the training process). hardware=h100 as users run it, Liger on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli

from pricer.evaluate import METRICS_FILE

pytestmark = pytest.mark.gpu


def test_rescoring_a_gpu_run_reproduces_its_own_report(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    run_dir = tmp_path / "runs" / "gpu"
    trained = run_cli(["experiment=demo", "hardware=h100", "hardware.per_device_train_batch_size=8",
                       "training.max_steps=30", "evaluation.test_items=200", "tracking=none", f"output_root={tmp_path}",
                       f"hydra.run.dir={run_dir}"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    own = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    out = tmp_path / "rescored"
    again = subprocess.run([sys.executable, "-m", "pricer.evaluate", str(run_dir), "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    got = json.loads((out / METRICS_FILE).read_text())
    for key in ("test/price_error", "test/hit_rate", "test/rmsle", "test/items"):
        assert got[key] == own[key], (key, got[key], own[key])
