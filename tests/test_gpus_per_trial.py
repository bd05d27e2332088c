"""k GPUs per trial (`hydra.sweeper.gpus_per_trial=k`): each trial is one run of k ranks, its worker started
under torchrun (gloo ranks on this CPU-only machine); and ranks that would share a GPU where a fixed batch
cannot fit are refused before any trial, in one line."""

import json
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, run_cli_in_process
from optuna.trial import TrialState

# Two short trials: the point is how the ranks share each trial, not what it learns. A validation score
# every 2 steps, so each trial reports twice to the study.
TWO_RANK_SWEEP = [
    "experiment=demo",
    "sweep=tpe",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.gpus_per_trial=2",
    "training.max_steps=4",
    "training.logging_steps=2",
    "evaluation.eval_steps=2",
    "evaluation.val_items=20",
    "evaluation.test_items=10",
]


@pytest.mark.slow  # a sweep: a worker of 2 torchrun ranks trains 2 trials
def test_two_gpus_per_trial_run_every_trial_as_one_run_of_two_ranks(tmp_path: Path, tiny_model_dir) -> None:
    out = run_cli([*TWO_RANK_SWEEP, f"output_root={tmp_path}"], timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "x 2 ranks (torchrun)" in out.stdout

    sweep_dir = tmp_path / "sweeps" / "tpe"
    trials = optuna.load_study(study_name="tpe", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    assert len({t.user_attrs["worker"] for t in trials}) == 1, "rank 0 of the one worker claimed both"

    # One run per trial: its job dir, rank 1's Hydra files and log inside it; one name, one run.json each.
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert len(list(tmp_path.rglob("run.json"))) == 2
    assert len(list((tmp_path / ".run_names").iterdir())) == 2
    assert not (tmp_path / "runs").exists()
    for trial in trials:
        run_dir = sweep_dir / str(trial.number)
        assert trial.user_attrs["run_dir"] == str(run_dir)
        assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [".hydra", "adapter", "checkpoints", "rank1"]
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["status"] == "finished"
        for log in (run_dir / "train.log", run_dir / "rank1" / "train.log"):
            text = log.read_text()
            assert "effective batch 16 = 8 per device x 1 accumulation x 2 devices" in text, log
            assert f"run {meta['project_run_name']} -> {run_dir} " in text, log
        assert "test     Error=" not in (run_dir / "rank1" / "train.log").read_text()  # rank 0 scores the test set

        # One report stream: a value at each validation score (steps 2 and 4), the one rank 0 logged; the
        # objective is the run's own validation score.
        history = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        logged = {entry["step"]: entry["eval_price_error"] for entry in history if "eval_price_error" in entry}
        assert sorted(logged) == [2, 4]
        assert trial.intermediate_values == {step: pytest.approx(value) for step, value in logged.items()}
        scores = json.loads((run_dir / "adapter" / "metrics.json").read_text())
        assert trial.value == pytest.approx(scores["val/price_error"])


@pytest.mark.slow  # a sweep: a worker of 2 torchrun ranks trains 2 trials until they are pruned
def test_a_pruned_trial_of_two_ranks_stops_on_both_at_its_step(tmp_path: Path, tiny_model_dir) -> None:
    """Every rank stops at the step the trial was pruned at: a rank that trained on would wait in its next
    all-reduce for one that stopped, and the worker would hang. A threshold no score meets prunes every
    trial at its first report (a config group of the test's own, found through hydra.searchpath)."""
    pruners = tmp_path / "conf" / "hydra" / "sweeper" / "pruner"
    pruners.mkdir(parents=True)
    (pruners / "threshold.yaml").write_text("_target_: optuna.pruners.ThresholdPruner\nupper: 1.0\n")
    out = run_cli(["experiment=demo", "sweep=demo", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                   "hydra/sweeper/pruner=threshold", "hydra.sweeper.n_trials=2", "hydra.sweeper.gpus_per_trial=2",
                   "training.max_steps=6", "training.logging_steps=2", "evaluation.eval_steps=2", "evaluation.val_items=20",
                   "evaluation.test_items=10", f"output_root={tmp_path / 'out'}"], timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    sweep_dir = tmp_path / "out" / "sweeps" / "demo"
    trials = optuna.load_study(study_name="demo", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").get_trials()
    assert [(t.state, t.user_attrs["pruned_at_step"], list(t.intermediate_values)) for t in trials] == [
        (TrialState.PRUNED, 2, [2])] * 2
    for trial in trials:
        run_dir = sweep_dir / str(trial.number)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "pruned"
        assert "x 2 devices" in (run_dir / "rank1" / "train.log").read_text()


@pytest.mark.slow  # a sweep whose trial is a submitit job of 2 tasks (submitit's local executor)
def test_a_launcher_job_of_two_tasks_is_one_run_of_two_ranks(tmp_path: Path, tiny_model_dir) -> None:
    """Where a launcher runs the jobs (SLURM), a trial is one job of k tasks and the ranks come from the
    scheduler: pricer.distributed takes them from submitit's job environment (SLURM's variables on a
    cluster, the local executor's own here). tasks_per_node follows gpus_per_trial by interpolation."""
    out = run_cli(["experiment=demo", "sweep=tpe", "hydra/launcher=submitit_local",
                   "hydra.launcher.tasks_per_node=${hydra.sweeper.gpus_per_trial}", "hydra.sweeper.gpus_per_trial=2",
                   "hydra.sweeper.n_trials=1", "training.max_steps=2", "evaluation.val_items=10", "evaluation.test_items=5",
                   f"output_root={tmp_path}"], timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    sweep_dir = tmp_path / "sweeps" / "tpe"
    (trial,) = optuna.load_study(study_name="tpe", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").get_trials()
    assert trial.state == TrialState.COMPLETE
    (run_file,) = tmp_path.rglob("run.json")  # one run, in the trial's job dir
    meta = json.loads(run_file.read_text())
    assert run_file.parent == sweep_dir / "0" and meta["status"] == "finished"
    assert len(list((tmp_path / ".run_names").iterdir())) == 1
    log = (sweep_dir / "0" / "train.log").read_text()  # the job's two tasks share its Hydra dir and log
    assert log.count("effective batch 16 = 8 per device x 1 accumulation x 2 devices") == 2
    assert log.count(f"run {meta['project_run_name']} -> {sweep_dir / '0'} ") == 2


@pytest.mark.slow  # a sweep of 2 worker processes (their trials fail at once: no CUDA here)
def test_workers_sharing_a_gpu_with_batch_auto_each_fill_their_share_of_it(tmp_path: Path) -> None:
    """batch=auto fills hardware.memory_gib of the card less 10 %: two workers on one card would each
    plan for the whole of it. Each gets memory_gib / 2 as its own setting, also where the user gave the
    card's memory on the command line (on an H100, 79: the workers were refused, the key given twice),
    and its trials then fail at validation, as hardware=h100 on a machine without CUDA must."""
    out = run_cli(["experiment=demo", "sweep=tpe", "hydra.sweeper.n_jobs=2", "hydra.sweeper.devices=[0,0]", "hardware=h100",
                   "hardware.per_device_train_batch_size=auto", "hardware.memory_gib=79", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.max_failure_rate=1", f"output_root={tmp_path}"], timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "each worker fills its share, hardware.memory_gib=39.5, 39.5 of 79" in out.stdout
    trials = optuna.load_study(study_name="tpe", storage=f"sqlite:///{tmp_path / 'sweeps' / 'tpe' / 'optuna.db'}").get_trials()
    assert [t.user_attrs["hardware.memory_gib"] for t in trials] == ["39.5", "39.5"]  # each worker's jobs ran with it
    assert all("needs a CUDA GPU" in t.user_attrs["fail_reason"] for t in trials)


REFUSED = [  # python -m pricer.train sweep=tpe output_root={tmp} ...: refused before any trial, on CPU
    (["hydra.sweeper.n_jobs=2", "hydra.sweeper.devices=[0,0]", "hardware=h100"],
     "hydra.sweeper.n_jobs=2 on hydra.sweeper.devices=[0,0]: 2 workers share GPU 0, but "
     "hardware.per_device_train_batch_size=80 (hardware=h100) is a fixed batch, sized for a whole card: "
     "pass hardware.per_device_train_batch_size=auto"),
    (["hydra.sweeper.n_jobs=3", "hydra.sweeper.devices=[0,1]", "hardware=a100"],
     "2 workers share GPU 0, but hardware.per_device_train_batch_size=36 (hardware=a100)"),
    (["hydra.sweeper.n_jobs=2", "hydra.sweeper.devices=[0,0]", "hardware=h100",
      "hardware.per_device_train_batch_size=choice(auto,64)"],
     "hardware.per_device_train_batch_size=swept (hardware=h100) is a fixed batch"),
    (["hydra.sweeper.gpus_per_trial=2", "hydra.sweeper.devices=[0]", "hardware=h100",
      "hardware.per_device_train_batch_size=auto"],
     "a trial's 2 ranks need 2 different GPUs: list n_jobs x gpus_per_trial = 2 GPUs in hydra.sweeper.devices"),
    (["hydra.sweeper.gpus_per_trial=0"], "hydra.sweeper.gpus_per_trial=0 must be at least 1"),
    (["hydra/launcher=submitit_local", "hydra.sweeper.gpus_per_trial=2"],
     "hydra.sweeper.gpus_per_trial=2 but hydra.launcher.tasks_per_node=1: a trial's job runs one task per rank: "
     "set hydra.launcher.tasks_per_node=2 and hydra.launcher.gpus_per_node=2"),
]


@pytest.mark.parametrize(("args", "message"), REFUSED)
def test_ranks_sharing_a_gpu_or_too_few_tasks_are_refused_in_one_line(args: list[str], message: str, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    """Two workers on one H100 with hardware=h100's batch 80 ran out of memory mid-sweep, four tracebacks."""
    out = run_cli_in_process(["sweep=tpe", f"output_root={tmp_path}", *args], monkeypatch, capsys)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # no sweep dir, no study
