"""sweep=slurm on a real one-node SLURM cluster (tests/slurm_cluster.py): sbatch, requeue, time limits, scancel.

Every trial is a real SLURM job, submitted by hydra-submitit-launcher through the real
sbatch and watched with sacct; the study lives in a real PostgreSQL server (conftest's
postgres_url). The trials are short runs of the tiny model (20 steps, a checkpoint every
5). Skipped, with the reason, only where the SLURM packages are not installed.
"""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli_in_process

pytestmark = pytest.mark.slow  # starts a cluster and runs sweeps of SLURM jobs

STEPS, SAVE_EVERY = 20, 5
LONG_STEPS = 300  # still training when SLURM's signal comes: slurmctld checks time limits every ~30 s, and a tiny step takes ~0.2 s


def sweep_args(tmp_path: Path, url: str, *extra: str, steps: int = STEPS) -> list[str]:
    return ["experiment=demo", "sweep=slurm", f"training.max_steps={steps}", f"training.save_steps={SAVE_EVERY}",
            "training.logging_steps=5", "evaluation.val_items=20", "evaluation.test_items=20",
            f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=slurm", "hydra.sweeper.heartbeat_interval=5",
            "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"output_root={tmp_path}", *extra]


def start_sweep(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m pricer.train ... sweep=slurm` as a user on a login node runs it, in the background."""
    return subprocess.Popen([sys.executable, "-m", "pricer.train", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


def wait_for(condition, what: str, timeout: float = 180, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"waited for {what}" + (f"\n{log.read_text()[-4000:]}" if log else ""))


def study(url: str):
    """The sweep's study, read through one storage that opens a connection per query and closes it: a new
    storage per poll (twice a second) left pooled connections open until PostgreSQL refused more clients."""
    import optuna

    return optuna.load_study(study_name="slurm", storage=_storage(url))


@functools.lru_cache(maxsize=4)
def _storage(url: str):
    import optuna
    import sqlalchemy

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})


def trial_attr(url: str, number: int, key: str):
    try:
        trials = [t for t in study(url).get_trials(deepcopy=False) if t.number == number]
    except KeyError:  # no study yet
        return None
    return trials[0].user_attrs.get(key) if trials else None


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name.rsplit("-", 1)[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())


def job_times(cluster, job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """SLURM's own record of each job's last start and its end (sacct, from slurmdbd)."""
    out = cluster.run("sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(job_ids)).stdout
    return {job: (start, end) for job, start, end in (line.split("|") for line in out.splitlines())}


def release_requeued(cluster, job_id: str, *updates: str) -> None:
    """SLURM holds a requeued job for 120 s (Reason=BeginTime); let it start in a few seconds instead, as an
    admin may. Not at once: slurmd refuses a launch whose credential dates from the same second as the
    revocation of the job's last one ("Killing non-startable batch JobId=6: Job credential revoked", seen
    in a CI run that released the job 0.5 s after its requeue; the 120 s hold exists for this)."""
    def held() -> bool:
        return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T %r").stdout.split() == ["PENDING", "BeginTime"]

    wait_for(held, f"job {job_id} to be requeued", timeout=240)  # under load a save and exit take a while
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+3", *updates)


def test_slurm_sweep_jobs_two_at_a_time_and_a_requeued_job_resumes_its_run(
        tmp_path: Path, slurm_cluster, postgres_url: str, hub_stand_in) -> None:
    """3 trials, n_jobs=2: each its own SLURM job, run dir, run name, Hub repo, W&B run; trial 0's job is
    requeued (`scontrol requeue`) after its first checkpoint and continues the same run from it; all COMPLETE
    once. The requeue's SIGTERM also ends W&B's service process (SLURM signals every process of the job).
    The sweep starts from a process that runs W&B, as a notebook's kernel does: sbatch passes its
    WANDB_SERVICE on, and each job still logs through a service of its own, which the job's signal reaches."""
    import wandb

    outer = wandb.init(project="outer", dir=str(tmp_path))  # exports WANDB_SERVICE (conftest puts it back)
    log = tmp_path / "sweep.log"
    proc = start_sweep(sweep_args(tmp_path, postgres_url, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                                  "hub.push=true", "tracking=wandb"), log,
                       env={"HF_HUB_OFFLINE": "0", "WANDB_SERVICE": os.environ["WANDB_SERVICE"]})
    run_dir = tmp_path / "sweep" / "0"
    job = wait_for(lambda: trial_attr(postgres_url, 0, "slurm_job"), "trial 0's SLURM job to start", proc=proc, log=log)
    wait_for(lambda: checkpoints(run_dir), "trial 0's first checkpoint", proc=proc, log=log)
    before = json.loads((run_dir / "run.json").read_text())
    slurm_cluster.run("scontrol", "requeue", job["id"])
    release_requeued(slurm_cluster, job["id"])
    out = finish(proc, log)
    outer.finish()
    assert proc.returncode == 0, out[-4000:]

    trials = study(postgres_url).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2], "no duplicate trial"
    assert {t.state.name for t in trials} == {"COMPLETE"}
    jobs = [t.user_attrs["slurm_job"]["id"] for t in trials]
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    repos = [t.user_attrs["hub_repo"] for t in trials]
    assert len(set(jobs)) == len(set(run_dirs)) == len(set(repos)) == 3
    assert sorted(hub_stand_in.repos) == sorted(repos)

    # the requeued job went on with the same run: dir, names, Hub repo, W&B id, from its last checkpoint
    after = json.loads((run_dir / "run.json").read_text())
    assert after["status"] == "finished" and after["resumed"] == 1
    for key in ("run_name", "project_run_name", "repo_id", "wandb_id"):
        assert after[key] == before[key]
    run_log = (run_dir / "train.log").read_text()
    stopped = re.search(r"interrupted by SIGTERM at step (\d+): checkpoint saved", run_log)
    resumed = re.search(r"continuing from .*checkpoint-(\d+)", run_log)
    assert stopped and resumed, run_log[-3000:]
    assert int(resumed.group(1)) == int(stopped.group(1)) > 0, "resumed from the checkpoint saved on the signal"
    assert "W&B's service process is gone" in run_log  # it went with the job's SIGTERM; the run saved all the same
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert [path.name.rsplit("-", 1)[1] for path in attempts] == [before["wandb_id"]] * 2  # one W&B run, resumed
    assert json.loads((run_dir / "adapter" / "metrics.json").read_text())["train_steps"] == STEPS
    print(f"requeue: signal at step {stopped.group(1)}, resumed from checkpoint-{resumed.group(1)}, final step {STEPS}")

    # two jobs at once; the slot of the first to end was refilled at once, while the other still ran
    first, other = sorted(trials[:2], key=lambda t: t.datetime_complete)
    assert trials[1].datetime_start < trials[0].datetime_complete and trials[0].datetime_start < trials[1].datetime_complete
    assert first.datetime_complete <= trials[2].datetime_start < other.datetime_complete
    times = job_times(slurm_cluster, jobs)  # SLURM's side: the third job started before the other one ended
    assert times[jobs[2]][0] < times[other.user_attrs["slurm_job"]["id"]][1], times
    print("jobs (start, end):", times)

    summary = (tmp_path / "sweep" / "summary.yaml").read_text()
    assert sorted(int(n) for n in re.findall(r"job: (\d+)", summary)) == [0, 1, 2]
    compare = subprocess.run([sys.executable, "-m", "pricer.compare", postgres_url, "--study", "slurm", "--out",
                              str(tmp_path / "plots")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stderr
    table = compare.stdout.split("\nplot:")[0].splitlines()  # the table, before the plots and links
    for repo in repos:  # one row per trial
        assert sum(repo in line.split() for line in table) == 1, compare.stdout


def test_slurm_time_limit_requeues_the_job_and_scancel_fails_its_trial(tmp_path: Path, slurm_cluster, postgres_url: str) -> None:
    """Trial 0's job reaches its time limit: the signal submitit asks SLURM for (SIGUSR2, signal_delay_s before
    the limit) makes pricer save, then submitit requeues the job (max_num_timeout=1), which resumes the run.
    Trial 1's job is scancel'd: its trial fails (max_failure_rate counts it) with a one-line reason, never RUNNING on.

    The limit is reached by shortening a running job's limit to the next whole minute past one more (`scontrol
    update TimeLimit=N`, SLURM's granularity): with signal_delay_s=120 the signal is then due at once, at a known
    step, a minute before the kill; the requeued job gets its 10 minutes back."""
    log = tmp_path / "sweep.log"
    proc = start_sweep(sweep_args(tmp_path, postgres_url, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                                  "hydra.sweeper.max_failure_rate=0.5", "hydra.launcher.signal_delay_s=120",
                                  "hydra.launcher.max_num_timeout=1", steps=LONG_STEPS), log)
    jobs = [wait_for(lambda n=n: trial_attr(postgres_url, n, "slurm_job"), f"trial {n}'s SLURM job", proc=proc, log=log)
            for n in (0, 1)]
    for n in (0, 1):
        wait_for(lambda n=n: checkpoints(tmp_path / "sweep" / str(n)), f"trial {n}'s first checkpoint", proc=proc, log=log)
    slurm_cluster.run("scancel", jobs[1]["id"])
    minutes = int(slurm_cluster.run("squeue", "-h", "-j", jobs[0]["id"], "-o", "%M").stdout.split(":")[-2])  # M:SS run
    slurm_cluster.run("scontrol", "update", f"JobId={jobs[0]['id']}", f"TimeLimit={minutes + 2}")  # ends >= 60 s from now
    release_requeued(slurm_cluster, jobs[0]["id"], "TimeLimit=10")
    out = finish(proc, log)
    assert proc.returncode == 0, out[-4000:]

    trials = sorted(study(postgres_url).get_trials(deepcopy=False), key=lambda t: t.number)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL")]
    run_dir = tmp_path / "sweep" / "0"
    run_log = (run_dir / "train.log").read_text()
    # the line says what happens next: SLURM (submitit) requeues the job, not "rerun the command"
    stopped = re.search(r"interrupted by SIGUSR2 at step (\d+): checkpoint saved, submitit requeues this SLURM job", run_log)
    resumed = re.search(r"continuing from .*checkpoint-(\d+)", run_log)
    assert stopped and resumed and int(resumed.group(1)) == int(stopped.group(1)) > 0, run_log[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["resumed"] == 1
    assert json.loads((run_dir / "adapter" / "metrics.json").read_text())["train_steps"] == LONG_STEPS
    job_log = next((tmp_path / "sweep" / ".submitit").glob(f"{jobs[0]['id']}/*_log.out")).read_text()
    assert f"Requeued job {jobs[0]['id']} (0 remaining timeouts)" in job_log, job_log[-2000:]
    print(f"time limit: SIGUSR2 at step {stopped.group(1)}, resumed from checkpoint-{resumed.group(1)}, final step {LONG_STEPS}")

    reason = trials[1].user_attrs["fail_reason"]
    assert reason.startswith(f"SLURM job {jobs[1]['id']} ended without a result (state CANCELLED"), reason
    line = next(line for line in out.splitlines() if "trial 1 failed" in line)
    assert line.endswith(reason) and "Traceback" not in out.split(line)[1].split("\n[")[0], out[-3000:]


def test_slurm_sweep_killed_and_run_again_waits_for_its_jobs(tmp_path: Path, slurm_cluster, postgres_url: str) -> None:
    """The sweep process (on a login node) is SIGKILLed once a trial has finished and others' jobs run; the same
    command again reruns no finished trial, submits no running one twice (it waits for those jobs) and reaches
    n_trials: 3 trials, 3 jobs in all."""
    args = sweep_args(tmp_path, postgres_url, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2")
    first = start_sweep(args, tmp_path / "first.log")

    def one_done_and_jobs_running():
        try:
            trials = study(postgres_url).get_trials(deepcopy=False)
        except KeyError:
            return None
        running = [t for t in trials if t.state.name == "RUNNING"]
        done = [t.number for t in trials if t.state.name == "COMPLETE"]
        if not done or not running or not all("slurm_job" in t.user_attrs for t in running):
            return None  # a job not started yet would be re-queued as a new trial after the grace period
        return done, {t.number: t.user_attrs["slurm_job"] for t in running}

    done, running = wait_for(one_done_and_jobs_running, "a finished trial and a running job", proc=first,
                             log=tmp_path / "first.log")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert all(slurm_cluster.run("squeue", "-h", "-j", job["id"]).stdout.strip() for job in running.values())

    log = tmp_path / "again.log"
    again = start_sweep(args, log)
    out = finish(again, log)
    assert again.returncode == 0, out[-4000:]
    trials = sorted(study(postgres_url).get_trials(deepcopy=False), key=lambda t: t.number)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    for n, job in running.items():
        assert f"trial {n}: its SLURM job {job['id']} runs on without the sweep that submitted it" in out
        assert trials[n].user_attrs["slurm_job"] == job  # told from that job's own result
    for n in done:
        assert f"#{n} :" not in out, "a finished trial is not submitted again"
    submitted = sorted(p.name for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.is_dir())
    assert len(submitted) == 3, submitted  # one sbatch per trial, over both sweep processes
    for n in range(3):  # each trial trained once: no run was resumed or started twice
        assert json.loads((tmp_path / "sweep" / str(n) / "run.json").read_text()).get("resumed", 0) == 0
    print(f"sweep killed with trials {done} done and jobs {running} running; run again: 3 trials, 3 jobs")


@pytest.mark.parametrize(("override", "key"), [
    ("hydra.launcher.partition=no_such_partition", "hydra.launcher.partition=no_such_partition"),
    ("hydra.launcher.account=no_such_account", "hydra.launcher.account=no_such_account"),
    ("hydra.sweeper.storage=postgresql+psycopg2://postgres@127.0.0.1:9/none", "hydra.sweeper.storage="),
])
def test_slurm_sweep_refused_before_any_job(override: str, key: str, tmp_path: Path, slurm_cluster, postgres_url: str,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A partition or account SLURM refuses (`sbatch --test-only`), or a PostgreSQL nobody listens on: one line
    naming the key, exit 2, and no job submitted."""
    before = slurm_cluster.run("sacct", "-X", "-n", "-o", "JobID").stdout.split()
    out = run_cli_in_process(sweep_args(tmp_path, postgres_url, override), monkeypatch, capsys)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}"), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert slurm_cluster.run("sacct", "-X", "-n", "-o", "JobID").stdout.split() == before
    assert not (tmp_path / "sweep" / ".submitit").exists()


def test_slurm_trial_of_two_tasks_is_one_run_with_a_log_per_rank(tmp_path: Path, slurm_cluster, postgres_url: str) -> None:
    """hydra.sweeper.gpus_per_trial=2 on the real cluster: the trial is one SLURM job whose step runs 2 tasks
    (srun), and the 2 tasks are the 2 ranks of one run (torch.distributed from SLURM's variables; gloo here,
    no GPU). Rank 0 logs in the job dir, rank 1 in `{job}/rank1`, not into rank 0's train.log."""
    log = tmp_path / "sweep.log"
    proc = start_sweep(sweep_args(tmp_path, postgres_url, "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1",
                                  "hydra.sweeper.gpus_per_trial=2", "hydra.launcher.mem_gb=2"), log)
    out = finish(proc, log)
    assert proc.returncode == 0, out[-4000:]
    (trial,) = study(postgres_url).get_trials(deepcopy=False)
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    job = trial.user_attrs["slurm_job"]["id"]
    steps = slurm_cluster.run("sacct", "-n", "-P", "-o", "JobID,NTasks", "-j", job).stdout.split()
    assert f"{job}.0|2" in steps, steps  # SLURM's record: the job's step ran 2 tasks

    run_dir = tmp_path / "sweep" / "0"
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    rank0, rank1 = (run_dir / "train.log").read_text(), (run_dir / "rank1" / "train.log").read_text()
    batch_lines = [line for line in rank0.splitlines() if "effective batch" in line]
    assert len(batch_lines) == 1 and "x 2 devices" in batch_lines[0], batch_lines
    assert "effective batch" in rank1, "rank 1 logs its own work, in its own file"
    assert not (run_dir / "rank1" / "run.json").exists(), "rank 1 claims nothing: the run is rank 0's"
