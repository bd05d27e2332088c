"""Sweeps, reliability round three, on the toy app of test_sweeper.py (real sweep processes, real
Optuna storage): concurrent commands draw their own params, a rerun says what it waits for, a trial
whose worker keeps dying fails with a reason and counts, and a stopped sweep keeps the signal's exit code."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_sweep_resilience import _wait_for
from test_sweeper import states, study, sweep, toy_env, write_toy

pytestmark = pytest.mark.slow  # sweeps of toy trials in subprocesses


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    write_toy(tmp_path)
    return tmp_path


def start(folder: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "toy.py", *overrides], cwd=folder, env=toy_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_identical_sweep_commands_on_one_storage_draw_different_params(toy: Path) -> None:
    """The same command twice at once, one seed, one study: before, both seeded their sampler alike
    (trials so far = 0, worker 0) and ran the same points."""
    args = ("hydra.sweeper.n_trials=8", "hydra/sweeper/sampler=random", "steps=20", "sleep=0.02")
    procs = [start(toy, *args) for _ in range(2)]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [out[-2000:] for out in outs]
    xs = [t.params["x"] for t in study(toy).trials if t.state == TrialState.COMPLETE]
    assert len(xs) == 8 and len(set(xs)) == 8, sorted(xs)


def test_a_rerun_after_sigkill_says_which_trial_it_waits_for(toy: Path) -> None:
    slow_beat = "hydra.sweeper.heartbeat_interval=5"  # stale 10 s after the kill: longer than the rerun's start-up
    first = start(toy, "hydra.sweeper.n_trials=2", slow_beat, "steps=200", "sleep=0.05")
    _wait_for(lambda: (toy / "sweep" / "multirun.yaml").exists() and any(
        t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in study(toy).trials), what="trial 0 to run")
    first.kill()
    first.communicate(timeout=30)
    again = sweep(toy, "hydra.sweeper.n_trials=2", slow_beat, "steps=5", timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "waiting for trial 0: last heartbeat" in log and "re-queued if none comes for 10 s" in log, log[-3000:]
    assert "trial 0: its worker stopped beating (killed, or its machine lost): re-queued" in log, log[-3000:]
    assert states(study(toy)) == {"FAIL": 1, "COMPLETE": 2}


def test_a_trial_whose_worker_dies_past_the_retry_limit_fails_with_a_reason_and_counts(toy: Path) -> None:
    """Every attempt kills its worker (here the sweep process): retried twice, then a failure with a
    reason that counts against n_trials and max_failure_rate. Before, the third death left a FAIL
    without a reason that counted nowhere, and each rerun started a new trial that died again."""
    args = ("hydra.sweeper.n_trials=1", "die=true", "hydra.sweeper.max_failure_rate=0")
    for attempt in range(3):  # trial 0, then its retries 1 and 2, each killing its sweep process
        out = sweep(toy, *args)
        assert out.returncode == -signal.SIGKILL, (attempt, out.stderr[-2000:])
        time.sleep(2.5)  # the heartbeat goes stale (heartbeat_interval 1: grace 2 s)
    last = sweep(toy, *args)
    log = last.stdout + last.stderr
    assert last.returncode == 1, log[-3000:]
    assert "trial 2 failed: its worker died 3 times (killed, or its machine lost), more than the retry limit 2" in log, log[-3000:]
    assert "1 of 1 trials failed, more than max_failure_rate=0" in log, log[-3000:]
    assert len(study(toy).trials) == 3  # no fourth trial


def test_a_stopped_sweep_past_max_failure_rate_exits_with_the_signal(toy: Path) -> None:
    """Two workers: trial 0 fails (past max_failure_rate 0.1 of 4) while trial 1 runs; then SIGTERM
    comes. The sweep exits 128 + SIGTERM, as any stopped sweep (was: 1, the failure-rate error)."""
    proc = start(toy, "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=0.1", "fail_trials=[0]",
                 "fail_after=20", "steps=2000", "sleep=0.05")  # trial 0 fails once trial 1 runs
    _wait_for(lambda: (toy / "sweep" / "multirun.yaml").exists() and {t.state for t in study(toy).trials} >= {
        TrialState.FAIL, TrialState.RUNNING}, what="trial 0 failed while trial 1 runs")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "trials failed, more than max_failure_rate=0.1 allows" in out, out[-3000:]


def _open_new_study(url: str, barrier) -> None:
    from hydra_plugins.pricer_optuna_sweeper._study import open_study

    barrier.wait()  # every process creates the tables at the same moment
    open_study(url, "race", ["minimize"], heartbeat_interval=60, grace_period=None)


def test_sweeps_that_open_a_new_sqlite_study_at_once_all_start(tmp_path: Path) -> None:
    """Sweeps started together on a SQLite file that does not exist yet: each creates Optuna's tables
    unless they take turns, and all but one died on `UNIQUE constraint failed: alembic_version`."""
    import multiprocessing

    import optuna

    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path}/optuna{attempt}.db"
        barrier = context.Barrier(6)
        procs = [context.Process(target=_open_new_study, args=(url, barrier)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        assert [proc.exitcode for proc in procs] == [0] * 6, f"attempt {attempt}"
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["race"]
