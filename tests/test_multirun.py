"""A grid --multirun: distinct names, repos and W&B runs, one W&B group, a summary."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli


@pytest.mark.slow
def test_grid_over_dropout(tmp_path: Path, hub_stand_in) -> None:
    sweep_dir = tmp_path / "sweep"
    out = run_cli(
        [
            "--multirun",
            "experiment=demo",
            "training.max_steps=6",
            "training.logging_steps=2",
            "training.save_steps=100",
            "hub.push=true",
            "tracking=wandb",
            "lora.lora_dropout=0.05,0.1,0.2",
            f"hydra.sweep.dir={sweep_dir}",
            f"output_root={tmp_path}",
        ],
        env={"HF_HUB_OFFLINE": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]

    summary = yaml.safe_load((sweep_dir / "summary.yaml").read_text())
    assert summary["metric"] == "val/price_error", "a --multirun selects on the validation slice, not the test set"
    dropouts = [o.split("=")[1] for job in summary["jobs"] for o in job["overrides"].split() if o.startswith("lora.lora_dropout=")]
    assert sorted(dropouts) == ["0.05", "0.1", "0.2"]
    assert all(job["status"] == "COMPLETED" for job in summary["jobs"])  # objectives: checked against metrics.json below
    assert "sweep summary (optimised: val/price_error" in out.stdout + out.stderr

    assert len(hub_stand_in.repos) == 3 and all(repo.private for repo in hub_stand_in.repos.values())
    names = [repo_id.split("/")[1] for repo_id in hub_stand_in.repos]
    records = [f.read_bytes() for f in sorted(sweep_dir.glob("*/wandb/offline-run-*/run-*.wandb"))]
    assert len(records) == 3
    group = f"sweep-{sweep_dir.name}".encode()
    assert all(group in record for record in records)
    assert all(sum(name.encode() in record for record in records) == 1 for name in names)
    assert sorted(p.name for p in sweep_dir.glob("*/adapter")) == ["adapter"] * 3
    for job in summary["jobs"]:  # each run returned its validation score; its test score is the report beside it
        written = json.loads((sweep_dir / str(job["job"]) / "adapter" / "metrics.json").read_text())
        assert job["objective"] == pytest.approx(written["val/price_error"])
        assert job["test/price_error"] == pytest.approx(written["test/price_error"])
        assert written["val/items"] == 100 and written["test/items"] == 250


@pytest.mark.slow
def test_optuna_sweep_of_the_real_trainer(tmp_path: Path) -> None:
    """sweep=tpe on the tiny model: every trial trains, scores, reports and lands in the study."""
    import optuna

    out = run_cli(
        [
            "sweep=tpe",
            "experiment=demo",
            "training.max_steps=8",
            "training.logging_steps=2",
            "evaluation.eval_steps=4",
            "evaluation.val_items=16",
            "evaluation.test_items=16",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=0",
            f"output_root={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "tpe"
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert len(study.trials) == 3
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 3 and study.trials[0].state == optuna.trial.TrialState.COMPLETE
    for trial in study.trials:
        assert {"optimizer.learning_rate", "lora.lora_dropout", "scheduler", "lora"} <= set(trial.params)
        assert trial.user_attrs["wandb_run"].startswith("pricer-")
        assert trial.intermediate_values  # eval_price_error reported at steps 4 and 8
    for trial in study.trials:  # the sampler saw validation scores only; the test score rides along
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(trial.user_attrs["val/price_error"])
            assert "test/price_error" in trial.user_attrs
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(study.best_value)
