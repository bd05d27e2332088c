"""Sweeps that survive signals and killed workers, prune in the study's direction and summarize what ran.

Faults are injected into real processes: SIGTERM to a sweep or to one of its workers,
SIGKILL to a sweep in the middle of a trial. Each test then reads the study (trial
states, user attrs) and the run dirs (run.json, checkpoints) that the processes left.
The toy app of test_sweeper.py checks the sweeper's side in seconds; the slow tests run
pricer.train on the tiny model.
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
from conftest import ROOT, run_cli
from optuna.trial import TrialState
from test_sweeper import runs, states, study, toy_env, write_toy

# --- the sweeper's side, on the toy app ---------------------------------------------------------


TOY_STEPS = 40  # steps of a toy job in these sweeps, 0.05 s each, each reported to its trial


def _toy_sweep(folder: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "toy.py", f"steps={TOY_STEPS}", "sleep=0.05", *overrides], cwd=folder,
                            env=toy_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, timeout: float = 90, what: str = "condition"):
    """Poll until `condition()` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def _running(folder: Path) -> list[optuna.trial.FrozenTrial]:
    if not (folder / "sweep" / "multirun.yaml").exists():  # written once the study exists
        return []
    return [t for t in study(folder).trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]


def _mid_job(trial: optuna.trial.FrozenTrial) -> bool:
    """The trial's job has a quarter of its steps (0.5 s or more) to go: a signal sent now lands inside it.

    RUNNING alone is not enough: a trial stays RUNNING from the end of its job until its
    worker tells it, and a signal in that window rightly leaves it COMPLETE. Under load a
    poll can see a trial RUNNING for the first time there.
    """
    return len(trial.intermediate_values) <= TOY_STEPS * 3 // 4


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    write_toy(tmp_path)
    return tmp_path


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_sigterm_to_a_sweep_leaves_its_trial_waiting_and_a_rerun_finishes_it(toy: Path) -> None:
    first = _toy_sweep(toy)
    victim = _wait_for(lambda: next((t.number for t in _running(toy) if t.number >= 1 and _mid_job(t)), None),
                       what="a trial after trial 0 to run its job")  # usually trial 1
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, out[-3000:]
    s = study(toy)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * victim + [TrialState.WAITING], states(s)
    assert "SIGTERM" in s.trials[victim].user_attrs["interrupted"]
    assert "fail_reason" not in s.trials[victim].user_attrs

    again = _toy_sweep(toy)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out[-3000:]
    s = study(toy)
    assert states(s) == {"COMPLETE": 4}, "the interrupted trial is the same trial, finished, not a failure"
    assert sorted(r["number"] for r in runs(toy)) == [0, 1, 2, 3]  # the interrupted job ran to its end once


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_sigterm_to_one_worker_stops_it_and_the_other_worker_resumes_its_trial(toy: Path) -> None:
    sweep = _toy_sweep(toy, "hydra.sweeper.n_jobs=2")

    def victim_mid_job() -> optuna.trial.FrozenTrial | None:
        running = _running(toy)
        return next((t for t in running if _mid_job(t)), None) if len(running) == 2 else None

    victim = _wait_for(victim_mid_job, what="both workers to run a trial, one of them mid-job")
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGTERM)
    out, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 0, out[-3000:]  # the study finished: the stopped worker is no error
    s = study(toy)
    assert states(s) == {"COMPLETE": 4}
    assert "SIGTERM" in s.trials[victim.number].user_attrs["interrupted"]
    again = [r for r in runs(toy) if r["number"] == victim.number]
    assert len(again) == 1 and again[0]["pid"] != int(victim.user_attrs["worker"].rsplit(":", 1)[1])


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_sigterm_to_a_parallel_sweep_stops_every_worker(toy: Path) -> None:
    sweep = _toy_sweep(toy, "hydra.sweeper.n_jobs=2")
    _wait_for(lambda: len(running := _running(toy)) == 2 and all(map(_mid_job, running)),
              what="both workers to run a trial, mid-job")
    sweep.send_signal(signal.SIGTERM)  # the sweep process only: it forwards the signal to its workers
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 128 + signal.SIGTERM, out[-3000:]
    s = study(toy)
    assert "FAIL" not in states(s) and states(s).get("WAITING") == 2, states(s)
    done = _toy_sweep(toy, "hydra.sweeper.n_jobs=2")
    out, _ = done.communicate(timeout=120)
    assert done.returncode == 0, out[-3000:]
    assert states(study(toy)) == {"COMPLETE": 4}


@pytest.mark.slow  # a sweep of toy trials in subprocesses
def test_sigterm_to_a_parallel_sweep_while_its_workers_start_exits_as_stopped(toy: Path) -> None:
    """A signal right after the workers start reaches them through the sweep process (whose own handler
    used to come only after the start: it died, exit -15). Workers still importing have no handler yet
    and die of it (exit -15): they had claimed nothing, so they are stopped, not failed (was: exit 1)."""
    sweep = _toy_sweep(toy, "hydra.sweeper.n_jobs=2")
    seen = ""
    while "worker 1 (pid" not in seen and sweep.poll() is None:
        seen += sweep.stdout.readline()
    sweep.send_signal(signal.SIGTERM)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 128 + signal.SIGTERM, (seen + out)[-3000:]
    assert "FAIL" not in states(study(toy)) and not runs(toy)


def test_a_signal_handed_to_another_thread_while_workers_start_reaches_every_worker(monkeypatch) -> None:
    """The kernel may give a process's SIGTERM to any thread that does not block it (the sweep
    process has Optuna's and SQLAlchemy's): Python then runs the forwarding handler in the main
    thread between two lines of the start loop, after worker 0 started and before worker 1 did.
    Both must get it (was: neither, so the workers ran every trial and the study ended COMPLETE)."""
    import threading

    from hydra_plugins.pricer_optuna_sweeper import _workers
    from hydra_plugins.pricer_optuna_sweeper._signals import SweepStop

    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-c", "import time; time.sleep(60)"])  # a worker
    real_start, worker_0_started, sent = _workers._start, threading.Event(), threading.Event()

    def send() -> None:  # a thread that exists before the workers start, like the sweep process's own
        worker_0_started.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # the kernel may hand it to this thread
        sent.set()

    def start_then_signal(index: int, *args):
        proc = real_start(index, *args)
        if index == 0:
            worker_0_started.set()
            sent.wait()
        return proc

    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    monkeypatch.setattr(_workers, "_start", start_then_signal)
    stop = SweepStop(raise_in_job=False)
    started = time.monotonic()
    codes = _workers.run_workers(2, [], [], stop)
    sender.join()
    assert stop.signum == signal.SIGTERM
    assert codes == [-signal.SIGTERM] * len(codes) and codes, codes
    assert time.monotonic() - started < 30, "a worker slept on: it never got the signal"


def test_a_signal_handed_to_another_thread_while_workers_run_reaches_them(monkeypatch) -> None:
    """Once the workers run, the sweep process waits for them. A SIGTERM the kernel hands to another of
    its threads runs the forwarding handler only when the main thread next runs Python: a main thread
    blocked in waitpid forwarded it only after the workers ended (they ran every trial). Here the main
    thread blocks SIGTERM once both workers run, so the kernel must hand it to the sender thread."""
    import threading

    from hydra_plugins.pricer_optuna_sweeper import _workers
    from hydra_plugins.pricer_optuna_sweeper._signals import SweepStop

    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-c", "import time; time.sleep(60)"])  # a worker
    real_start, both_started = _workers._start, threading.Event()

    def start_then_mask(index: int, *args):
        proc = real_start(index, *args)  # started with SIGTERM unblocked: the mask is inherited
        if index == 1:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            both_started.set()
        return proc

    def send() -> None:
        both_started.wait()
        time.sleep(0.5)  # the main thread is waiting for the workers by now
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(_workers, "_start", start_then_mask)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    started = time.monotonic()
    try:
        codes = _workers.run_workers(2, [], [], SweepStop(raise_in_job=False))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    sender.join()
    assert codes == [-signal.SIGTERM] * 2, codes
    assert time.monotonic() - started < 30, "the workers slept on: the signal was never forwarded"


@pytest.mark.parametrize("edge", ["before", "opening", "closing"])
def test_a_signal_on_the_edge_of_the_job_window_is_told_not_raised(edge: str) -> None:
    """Python runs the handler between any two lines. Before the window (claiming, starting the
    heartbeat thread) it only sets the flag: the job must not start, though no line checks the flag
    after it (seen under load: the job ran to its end, the trial COMPLETE). On the window's first or
    last line it raises Interrupted: the trial is still told, not left RUNNING by an escaped
    Interrupted, and a job that had returned keeps its outcome."""
    from contextlib import contextmanager

    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.pricer_optuna_sweeper._signals import SweepStop
    from hydra_plugins.pricer_optuna_sweeper._study import _launch_guarded, tell
    from pricer.interrupt import Interrupted

    class EdgeStop(SweepStop):
        @contextmanager
        def job(self):
            if edge == "before":
                self._on_signal(signal.SIGTERM, None)
            with super().job():
                if edge == "opening":
                    self._on_signal(signal.SIGTERM, None)
                yield
                if edge == "closing":
                    self._on_signal(signal.SIGTERM, None)

    s = optuna.create_study()
    trial, stop, launched = s.ask(), EdgeStop(raise_in_job=True), []

    def launch(t: optuna.trial.Trial) -> JobReturn:
        launched.append(t.number)
        return JobReturn(status=JobStatus.COMPLETED, _return_value=1.5)

    ret = _launch_guarded(s, trial, launch, stop)
    tell(s, trial, ret, stop)
    assert stop.signum == signal.SIGTERM
    if edge == "closing":
        assert s.trials[0].state == TrialState.COMPLETE and s.trials[0].value == 1.5
    else:
        assert isinstance(ret._return_value, Interrupted) and s.trials[0].state == TrialState.WAITING
        assert launched == [], "the job never started"


# --- pruning reads the study's direction ----------------------------------------------------------


def _trial_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str, metric: str) -> optuna.Study:
    """A study with a pruner that stops everything, and this process as its trial 0."""
    from pricer import trial as job

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = optuna.create_study(study_name="dir", storage=url, direction=direction)
    s.set_user_attr(job.PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1e9})
    t = s.ask()
    for key, value in {job.ENV_STORAGE: url, job.ENV_STUDY: "dir", job.ENV_TRIAL: str(t.number),
                       job.ENV_METRIC: metric}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(job, "_trial", functools.lru_cache(maxsize=1)(job._trial.__wrapped__))
    return s


@pytest.mark.parametrize(("direction", "metric", "logs", "reported"), [
    ("maximize", "val/hit_rate", {"loss": 2.0}, {}),  # the loss runs the other way: never reported
    ("maximize", "val/hit_rate", {"eval_hit_rate": 40.0}, {10: 40.0}),
    ("minimize", "val/price_error", {"loss": 2.0}, {10: 2.0}),
    ("maximize", "val/price_error", {"eval_price_error": 30.0}, {}),  # a custom direction against an error
])
def test_an_intermediate_value_against_the_studys_direction_is_never_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str, metric: str, logs: dict,
        reported: dict) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from pricer import trial as job

    s = _trial_of(tmp_path, monkeypatch, direction, metric)
    (callback,) = job.trial_callbacks(eval_during_training="eval_" in next(iter(logs)))
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to=[]), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    state.global_step = 10
    callback.on_log(args, state, control, logs=logs)
    assert s.trials[0].intermediate_values == reported
    assert control.should_training_stop == bool(reported), "only a reported value reaches the pruner"


# --- pricer.train on the tiny model -------------------------------------------------------------------

TRIALS = [
    "--multirun",
    "hydra/sweeper=pricer_optuna",
    "experiment=demo",
    "optimizer.learning_rate=tag(log, interval(3e-4, 3e-3))",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.sampler.seed=0",
    "training.max_steps=8",
    "training.logging_steps=2",
    "training.save_steps=4",
    "evaluation.val_items=16",
    "evaluation.test_items=16",
]


def _sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    """TRIALS with `extra` in place of the keys it names (a key given twice is refused)."""
    keys = {e.split("=", 1)[0] for e in extra}
    base = [a for a in TRIALS if a.split("=", 1)[0] not in keys]
    return [*base, *extra, f"output_root={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pricer.train", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sweep_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")


def _steps(checkpoint: Path) -> list[int]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["step"] for entry in state["log_history"] if "loss" in entry]


def _saved(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()


@pytest.mark.slow
def test_sigterm_mid_trial_then_the_same_command_resumes_it_in_its_run_dir(tmp_path: Path, hub_stand_in) -> None:
    args, env = _sweep_args(tmp_path, "hub.push=true", "tracking=wandb"), {"HF_HUB_OFFLINE": "0"}
    run_dir = tmp_path / "sweep" / "0"
    first = _start(args, env)
    _wait_for(lambda: _saved(run_dir) or first.poll() is not None, timeout=240, what="trial 0's first checkpoint")
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=240)
    assert first.returncode == 128 + signal.SIGTERM, out[-3000:]
    (trial,) = _sweep_study(tmp_path).trials
    assert trial.state == TrialState.WAITING and "SIGTERM" in trial.user_attrs["interrupted"]
    assert trial.user_attrs["run_dir"] == str(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    from pricer.resume import checkpoint_step, complete_checkpoints

    step = checkpoint_step(complete_checkpoints(run_dir / "checkpoints")[-1])
    assert 4 <= step < 8

    again = run_cli(args, env=env, timeout=480)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing from {run_dir / 'checkpoints' / f'checkpoint-{step}'}" in again.stdout + again.stderr
    s = _sweep_study(tmp_path)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 2
    resumed = json.loads((run_dir / "run.json").read_text())
    assert (resumed["status"], resumed["resumed"]) == ("finished", 1)
    assert (resumed["run_name"], resumed["repo_id"], resumed["wandb_id"]) == (meta["run_name"], meta["repo_id"],
                                                                               meta["wandb_id"])
    assert s.trials[0].user_attrs["hub_repo"] == meta["repo_id"] and len(hub_stand_in.repos) == 2  # no third repo
    assert _steps(run_dir / "checkpoints" / "checkpoint-8") == [2, 4, 6, 8]  # one curve, not from step 0
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and len({p.name.rsplit("-", 1)[1] for p in attempts}) == 1  # one W&B run, resumed


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_sigkill_mid_trial_then_the_same_command_resumes_it_from_its_checkpoint(tmp_path: Path) -> None:
    args = _sweep_args(tmp_path, "hydra.sweeper.heartbeat_interval=1")  # stale 2 s after the kill
    run_dir = tmp_path / "sweep" / "0"
    first = _start(args)
    _wait_for(lambda: _saved(run_dir) or first.poll() is not None, timeout=240, what="trial 0's first checkpoint")
    first.kill()
    first.communicate(timeout=60)
    (killed,) = _sweep_study(tmp_path).trials
    assert killed.state == TrialState.RUNNING and killed.user_attrs["run_dir"] == str(run_dir)
    name = json.loads((run_dir / "run.json").read_text())["run_name"]

    again = run_cli(args, timeout=480)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing from {run_dir / 'checkpoints'}/checkpoint-" in again.stdout + again.stderr
    s = _sweep_study(tmp_path)
    assert states(s) == {"FAIL": 1, "COMPLETE": 2} and "fail_reason" not in s.trials[0].user_attrs
    retry = s.trials[1]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.params == killed.params and retry.user_attrs["run_dir"] == str(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["run_name"], meta["resumed"]) == ("finished", name, 1)
    assert _steps(run_dir / "checkpoints" / "checkpoint-8") == [2, 4, 6, 8]
    assert not (tmp_path / "sweep" / "1" / "checkpoints").exists(), "the retry trained in trial 0's run dir"


@pytest.mark.slow
def test_summary_of_a_parallel_sweep_lists_every_trial_once(tmp_path: Path) -> None:
    """2 workers, a maximised hit rate: the sweep's table holds both workers' trials, best (highest)
    first, and no trial reported its train loss (it runs the other way)."""
    args = _sweep_args(tmp_path, "hydra.sweeper.n_jobs=2", "optimized_metric=val/hit_rate",
                       "hydra.sweeper.direction=maximize", "training.max_steps=4")
    out = run_cli(args, timeout=480)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = yaml.safe_load((tmp_path / "sweep" / "summary.yaml").read_text())
    s = _sweep_study(tmp_path)
    assert sorted(job["job"] for job in summary["jobs"]) == [0, 1]
    assert len({t.user_attrs["worker"] for t in s.trials}) == 2, "one trial per worker: each saw only its own"
    values = [job["objective"] for job in summary["jobs"]]
    assert values == sorted(values, reverse=True) and summary["metric"] == "val/hit_rate"
    assert {job["job"]: job["objective"] for job in summary["jobs"]} == {t.number: t.value for t in s.trials}
    assert all(job["status"] == "COMPLETED" for job in summary["jobs"])
    assert all(t.intermediate_values == {} for t in s.trials)
