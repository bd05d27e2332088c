"""The pricer_optuna sweeper end to end, on a toy Hydra app that trains in milliseconds.

The toy job reports a learning curve through pricer.trial exactly as pricer.train does
(report at each step, raise_if_pruned at the end), raises or diverges when told, and
appends what it ran to runs.jsonl, so a test can check which trials really ran.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]

TOY_APP = '''
import json, math, os, time
from pathlib import Path

import hydra

from pricer import trial as job


@hydra.main(version_base="1.3", config_path=".", config_name="toy")
def main(cfg) -> float:
    number = job.current_trial_info()["number"]
    if cfg.die:  # a job that kills its worker (the sweep process itself with n_jobs=1), as an OOM killer would
        os.kill(os.getpid(), 9)
    if number in cfg.fail_trials:
        time.sleep(cfg.fail_after)
        raise RuntimeError(f"told to fail: trial {number}")
    steps, value = 0, float("nan")
    for step in range(cfg.steps):
        time.sleep(cfg.sleep)
        # a learning curve falling towards (x - 0.3)^2; NaN when told to diverge
        value = float("nan") if number in cfg.nan_trials else (cfg.x - 0.3) ** 2 + 1.0 / (step + 1)
        steps = step + 1
        if job.report(value, step):
            break
    record = {"number": number, "x": cfg.x, "n": cfg.n, "mode": cfg.mode, "k": cfg.k, "steps": steps,
              "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "threads": os.environ.get("OMP_NUM_THREADS")}
    with open("runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\\n")
    job.raise_if_pruned()
    return value


def extra_space(cfg, trial) -> None:
    """custom_search_space: params the grammar cannot say (here: k's range depends on nothing)."""
    trial.suggest_int("k", 0, 9)


if __name__ == "__main__":
    main()
'''

TOY_CONFIG = """
defaults:
  - override hydra/sweeper: pricer_optuna
  - _self_

x: 0.0
n: 1
mode: a
k: -1
steps: 5
sleep: 0.01
fail_trials: []
nan_trials: []
die: false
fail_after: 0  # seconds a failing trial runs first

hydra:
  mode: MULTIRUN
  sweep:
    dir: sweep
  sweeper:
    study_name: toy
    n_trials: 4
    heartbeat_interval: 1  # a killed trial is re-queued 2 s after its last heartbeat
    sampler:
      seed: 0
    params:
      x: interval(0.0, 1.0)
"""


def write_toy(folder: Path) -> None:
    (folder / "toy.py").write_text(TOY_APP)
    (folder / "toy.yaml").write_text(TOY_CONFIG)


def toy_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICER_OPTUNA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def sweep(folder: Path, *overrides: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "toy.py", *overrides], cwd=folder, env=toy_env(),
                          capture_output=True, text=True, timeout=timeout)


def runs(folder: Path) -> list[dict]:
    path = folder / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def study(folder: Path, url: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="toy", storage=url or f"sqlite:///{folder / 'sweep' / 'optuna.db'}")


def states(s: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in s.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    write_toy(tmp_path)
    return tmp_path


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_tpe_sweep_runs_four_trials_with_the_logged_params(toy: Path) -> None:
    proc = sweep(toy, "n=int(interval(1, 4))", "mode=choice(a, 'b c')",  # command-line params
                 "hydra.sweeper.custom_search_space=toy.extra_space")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = study(toy)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 4
    ran = {r["number"]: r for r in runs(toy)}
    for t in s.trials:  # what the job ran is what the study logged
        job = ran[t.number]
        assert (job["x"], job["n"], job["mode"], job["k"]) == tuple(t.params[p] for p in ("x", "n", "mode", "k"))
        assert (toy / "sweep" / str(t.number)).is_dir()  # job dir = trial number
        assert t.intermediate_values and len(t.intermediate_values) == 5
    results = yaml.safe_load((toy / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(s.best_value)
    assert results["best_params"] == s.best_params


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_a_direction_against_the_metric_is_refused_before_any_trial(toy: Path) -> None:
    """Minimising test/hit_rate would hunt for the worst runs: one line names the fix, nothing runs."""
    done = sweep(toy, "+optimized_metric=test/hit_rate")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[0].endswith("the wrong way: add hydra.sweeper.direction=maximize")
    assert "Traceback" not in done.stderr, "one line, no traceback"
    assert not runs(toy) and not (toy / "sweep" / "optuna.db").exists()
    fixed = sweep(toy, "+optimized_metric=test/hit_rate", "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=1")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert study(toy).direction.name == "MAXIMIZE" and len(runs(toy)) == 1


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_pruned_trials_stop_before_their_last_step(toy: Path) -> None:
    proc = sweep(toy, "steps=6", "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=median",
                 "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = study(toy)
    ran = {r["number"]: r for r in runs(toy)}
    pruned = [t for t in s.trials if t.state == TrialState.PRUNED]
    assert pruned and len(s.trials) == 4, states(s)
    for t in pruned:
        assert ran[t.number]["steps"] < 6
        assert t.user_attrs["pruned_at_step"] == ran[t.number]["steps"] - 1
    assert all(ran[t.number]["steps"] == 6 for t in s.trials if t.state == TrialState.COMPLETE)


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_failed_trials_do_not_end_the_sweep_until_max_failure_rate(toy: Path) -> None:
    # 0.5 x 6 trials: three failures are tolerated, the fourth stops the sweep
    proc = sweep(toy, "hydra.sweeper.n_trials=6", "hydra.sweeper.max_failure_rate=0.5", "fail_trials=[1,3,4]",
                 "nan_trials=[2]")
    assert proc.returncode != 0
    assert "4 of 6 trials failed, more than max_failure_rate=0.5" in proc.stderr
    s = study(toy)
    assert [t.state.name for t in s.trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL", "FAIL"]  # no trial 5
    assert "told to fail: trial 1" in s.trials[1].user_attrs["fail_reason"]
    assert "NaN at step 0" in s.trials[2].user_attrs["fail_reason"]  # a diverged run fails, not prunes
    assert (toy / "sweep" / "optimization_results.yaml").exists()


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_rerun_resumes_a_killed_sweep(toy: Path) -> None:
    cmd = [sys.executable, "toy.py", "steps=10", "sleep=0.05"]  # ~0.5 s per trial
    first = subprocess.Popen(cmd, cwd=toy, env=toy_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (toy / "sweep" / "2").is_dir() and time.time() < deadline:  # trial 2's job has started
        time.sleep(0.02)
    time.sleep(0.25)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = study(toy).trials[2]
    assert killed.state == TrialState.RUNNING

    proc = subprocess.run(cmd, cwd=toy, env=toy_env(), capture_output=True, text=True, timeout=90)  # the same
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = study(toy)
    assert states(s) == {"COMPLETE": 4, "FAIL": 1}
    assert s.trials[2].state == TrialState.FAIL and "fail_reason" not in s.trials[2].user_attrs
    retry = [t for t in s.trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    numbers = [r["number"] for r in runs(toy)]
    assert numbers[:2] == [0, 1] and sorted(numbers[2:]) == [3, 4]  # numbering goes on, nothing ran twice


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_parallel_workers_are_pinned_and_never_share_a_trial(toy: Path) -> None:
    proc = sweep(toy, "hydra.sweeper.n_jobs=2", "hydra.sweeper.devices=[3,5]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert states(study(toy)) == {"COMPLETE": 4}
    ran = runs(toy)
    assert sorted(r["number"] for r in ran) == list(range(4))
    assert {r["gpu"] for r in ran} == {"3", "5"}
    assert all(len({r["gpu"] for r in ran if r["pid"] == pid}) == 1 for pid in {r["pid"] for r in ran})
    assert (toy / "sweep" / "optimization_results.yaml").exists()


@pytest.mark.slow  # a sweep of toy trials in subprocesses
@pytest.mark.parametrize("user_threads", [None, "3"])
def test_workers_on_the_cpu_split_its_cores_unless_the_user_set_threads(toy: Path, user_threads: str | None) -> None:
    """No GPU visible: each of 2 workers gets half the cores as OMP_NUM_THREADS, or the user's own value."""
    env = toy_env() | {"CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the host has
    env.pop("OMP_NUM_THREADS", None)
    if user_threads:
        env["OMP_NUM_THREADS"] = user_threads
    proc = subprocess.run([sys.executable, "toy.py", "hydra.sweeper.n_jobs=2"], cwd=toy, env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = runs(toy)
    assert len({r["pid"] for r in ran}) == 2 and all(r["gpu"] == "" for r in ran)
    expected = user_threads or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert {r["threads"] for r in ran} == {expected}


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_a_seeded_grid_with_two_workers_runs_every_point_once_and_exits_cleanly(toy: Path) -> None:
    """GridSampler gives trial i the i-th point of its seed's shuffle, and calls study.stop() when the
    grid is done: both workers must shuffle alike, and the stop outside study.optimize must not fail."""
    proc = sweep(toy, "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=7", "hydra.sweeper.n_jobs=2",
                 "hydra.sweeper.n_trials=10", "hydra.sweeper.params.x='choice(0.1,0.3,0.5)'",
                 "+hydra.sweeper.params.mode='choice(a,b)'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert states(study(toy)) == {"COMPLETE": 6}  # n_trials capped at the grid's size
    points = sorted((r["x"], r["mode"]) for r in runs(toy))
    assert points == sorted((x, mode) for x in (0.1, 0.3, 0.5) for mode in "ab")
    assert len({r["pid"] for r in runs(toy)}) == 2


@pytest.mark.slow  # each submitit job is a fresh Python process: ~13 s
def test_a_launcher_running_jobs_elsewhere_gets_one_job_per_slot(toy: Path) -> None:
    """submitit's local executor stands in for SLURM: each trial is its own process, 2 at a time."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = sweep(toy, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert states(study(toy)) == {"COMPLETE": 2}
    assert len({r["pid"] for r in runs(toy)}) == 2


def _trial_in_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective: str) -> optuna.Study:
    """A study whose pruner stops any value above 1.0, and this process as its trial 0."""
    from pricer import trial as job

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = optuna.create_study(study_name="cb", storage=url)
    s.set_user_attr(job.PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0})
    t = s.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3)})
    for key, value in {job.ENV_STORAGE: url, job.ENV_STUDY: "cb", job.ENV_TRIAL: str(t.number),
                       job.ENV_METRIC: objective}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(job, "_trial", functools.lru_cache(maxsize=1)(job._trial.__wrapped__))  # a fresh cache
    return s


def test_trainer_callback_reports_the_train_loss_and_stops_a_pruned_trial(tmp_path: Path, monkeypatch) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from pricer import trial as job

    assert job.trial_callbacks() == [] and job.current_trial_info() is None  # outside a sweep
    job.raise_if_pruned()
    s = _trial_in_study(tmp_path, monkeypatch, "test/price_error")
    (callback,) = job.trial_callbacks()  # no scoring during training: the loss is reported
    assert job.current_trial_info() == {"number": 0, "study_name": "cb", "params": s.trials[0].params}
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to=[]), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step, loss in [(10, 0.9), (20, 3.0)]:
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": loss})
    assert control.should_training_stop  # 3.0 > the pruner's threshold
    with pytest.raises(optuna.TrialPruned, match="step 20"):
        job.raise_if_pruned()
    assert s.trials[0].intermediate_values == {10: 0.9, 20: 3.0}


def test_trainer_callback_reports_only_the_scored_metric(tmp_path: Path, monkeypatch) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from pricer import trial as job

    s = _trial_in_study(tmp_path, monkeypatch, "test/price_error")
    (callback,) = job.trial_callbacks(eval_during_training=True)
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to=[]), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step, logs in [(10, {"loss": 3.0}), (20, {"eval_price_error": 0.5}), (30, {"loss": float("nan")})]:
        state.global_step = step
        callback.on_log(args, state, control, logs=logs)
    assert s.trials[0].intermediate_values == {20: 0.5}  # the loss never mixes in
    assert control.should_training_stop  # the NaN loss
    with pytest.raises(FloatingPointError, match="NaN at step 30"):
        job.raise_if_pruned()


@pytest.mark.parametrize(("objective", "logged"), [("eval/price_error", "eval_price_error"),
                                                   ("eval_price_error", "eval_price_error"),
                                                   ("test/price_error", "eval_price_error"),  # val slice in training
                                                   ("test/hit_rate", "eval_hit_rate")])
def test_the_objective_is_found_under_its_training_time_name(objective: str, logged: str) -> None:
    from pricer.trial import _pick

    assert _pick({"loss": 2.0, logged: 41.5}, objective) == 41.5
    assert _pick({"loss": 2.0}, objective) is None
