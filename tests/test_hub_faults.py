"""The Hub's answers that retrying cannot change, and pushes that arrive after the final adapter.
Faults come from the local Hub stand-in over real HTTP (tests/hub_server.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, run_cli_in_process

RUN = ["experiment=demo", "training.max_steps=24", "training.save_steps=8", "training.save_total_limit=2",
       "evaluation.test_items=20", "hub.push=true", "hub.push_wait_s=0.05"]


@pytest.mark.slow
def test_a_refused_token_stops_the_run_before_training_without_retries(tmp_path: Path, hub_stand_in,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """The real command in this process (run_cli_in_process: it ends before any model load), against the
    stand-in the fixture points this process's client at."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_token_0123456789")
    out = run_cli_in_process([*RUN, f"output_root={tmp_path}"], monkeypatch, capsys)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the Hub refused the token in HF_TOKEN (401): set a valid write token "
                      "(huggingface.co/settings/tokens), or pass hub.push=false"]
    assert len(hub_stand_in.requests_to("/api/whoami-v2")) == 1, "a 401 is never retried"
    assert "Loading weights" not in out.stderr and not hub_stand_in.repos
    assert not list((tmp_path / "runs").glob("*")), "nothing trained, no run dir left"
    assert "hf_not_the_right_token" not in out.stdout + out.stderr


@pytest.mark.slow
def test_checkpoints_pushed_after_the_final_adapter_never_replace_it(tmp_path: Path, hub_stand_in) -> None:
    """The three checkpoint commits fail, the final one lands; `pricer.push` later sends the checkpoints
    under checkpoint-N/ and the repo's root keeps exactly the final files. (A 403 rather than a 5xx:
    huggingface_hub retries 5xx commits itself, which would absorb the three faults.)"""
    hub_stand_in.fault_match, hub_stand_in.fail_first_n, hub_stand_in.fail_status = "/commit/", 3, 403
    run_dir = tmp_path / "run"
    out = run_cli([*RUN, "hub.push_attempts=1", f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"],
                  env={"HF_HUB_OFFLINE": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    (repo_id,) = hub_stand_in.repos
    assert not (run_dir / "pushed.json").exists() and hub_stand_in.fail_first_n == 0
    final = hub_stand_in.files(repo_id)
    assert final["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert json.loads((run_dir / "run.json").read_text())["final_pushed"] is True

    push = subprocess.run([sys.executable, "-m", "pricer.push", str(run_dir), "--wait-s", "0.05"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr[-2000:]
    assert "pushed checkpoint-8, checkpoint-16, checkpoint-24" in push.stdout
    files = hub_stand_in.files(repo_id)
    root = {path: content for path, content in files.items() if "/" not in path}
    assert root == {path: content for path, content in final.items() if "/" not in path}, "the root is the final adapter"
    for step in (8, 16, 24):
        local = run_dir / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors"
        assert files[f"checkpoint-{step}/adapter_model.safetensors"] == local.read_bytes()
    assert hub_stand_in.commits(repo_id)[-1].message == "Training in progress, step 24 (late, after the final adapter)"
