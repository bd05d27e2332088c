"""One worker's ask-run-tell loop on a shared study, and what it needs.

Every worker (a thread, a process, another machine) runs `run_trials` against the same
storage. There is no batch: a worker asks for its next trial as soon as its last one
ends. The study itself is the only shared state:

- budget: a worker claims a trial only while fewer than n_trials are done or running;
  a lock (a file in the sweep dir; on PostgreSQL also an advisory lock, for sweeps on
  other machines) makes that count exact;
- resume: a trial stopped by SIGTERM/SIGINT (its job saved a checkpoint and raised
  Interrupted) goes back to WAITING, the same trial with its `run_dir`: the next claim
  (this sweep's other workers, or the same command run again) continues it with
  `resume=<run_dir>`. Each running trial gets a heartbeat; a trial whose heartbeat stopped
  (SIGKILL, dead machine) is marked FAIL without a `fail_reason` and re-queued as a new
  trial with its params and user attrs, `run_dir` included (Optuna's
  RetryHeartbeatStaleTrialCallback), so it too resumes from its last complete checkpoint;
- failures: a failed trial carries `fail_reason`; once more than max_failure_rate x
  n_trials failed, workers stop claiming.
"""

import gc
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import FrozenTrial, Trial, TrialState

from pricer.interrupt import Interrupted, interruption_in
from pricer.logs import masked_url
from pricer.trial import NAN_AT, PRUNED_AT, SLURM_JOB, open_storage

from ._locks import database_lock, file_lock, heartbeat, sqlite_file
from ._signals import SweepStop
from ._space import SweepConfigError, describe

log = logging.getLogger(__name__)

FAIL_REASON = "fail_reason"  # user attr of a trial that failed (absent on a FAIL: its worker died, re-queued)
WORKER = "worker"  # user attr: host:pid of the worker that claimed the trial
INTERRUPTED = "interrupted"  # user attr: why the trial last went back to WAITING (a signal)
ADOPTED = "adopted_job"  # user attr: the SLURM job id a sweep run again waits for instead of submitting the trial
MAX_RETRY = 2  # a trial whose worker died is re-queued at most this often (a trial that kills its worker)
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def check_storage(url: str) -> None:
    """A hydra.sweeper.storage that cannot work, refused before a study or a folder exists.

    SQLite would create a missing file, but not a missing folder: that fails only once
    the sweep dir is made, with a traceback from deep inside SQLAlchemy.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise SweepConfigError(f"hydra.sweeper.storage={masked_url(url)} is not a database URL SQLAlchemy can open ({err}): "
                               "use e.g. sqlite:////abs/path/optuna.db or postgresql+psycopg2://user:pass@host/db") from None
    if (database := sqlite_file(url)) is not None:
        folder = database.parent
        if not folder.is_dir():
            raise SweepConfigError(f"hydra.sweeper.storage={url}: folder {folder} does not exist: "
                                   "create it, or leave storage unset for optuna.db in the sweep dir")


def open_study(url: str, name: str, directions: list[str], heartbeat_interval: int,
               grace_period: int | None, metric_names: list[str] | None = None) -> optuna.Study:
    """Create or join the study; the caller sets its sampler once it knows the study's size.

    Under the database lock: sweeps starting together on a fresh PostgreSQL database
    would otherwise race to create Optuna's tables (a duplicate-key error for one).
    An unreachable database is one line, not a traceback. `metric_names` (one per
    direction) name the objectives in the study (Optuna's set_metric_names): optuna-dashboard
    and Optuna's plots then label their axes `val/price_error`, not "Objective 0".
    """
    try:
        with database_lock(url, "pricer: create tables and study"):
            storage = open_storage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
            _check_readable(storage, study, url)
            _name_objectives(study, metric_names, url)
            return study
    except sqlalchemy.exc.DatabaseError as err:  # OperationalError too: refused, unknown host, bad file
        first = str(getattr(err, "orig", err)).strip().splitlines()[0]
        raise SweepConfigError(f"hydra.sweeper.storage={masked_url(url)}: cannot open the database ({first}): "
                               "check that it runs and is reachable, or leave storage unset") from None
    except ImportError as err:  # Optuna's word for a missing driver (psycopg2, MySQLdb, ...)
        raise SweepConfigError(f"hydra.sweeper.storage={masked_url(url)}: {err.__cause__ or err}: "
                               "install the database's Python driver") from None


def _name_objectives(study: optuna.Study, metric_names: list[str] | None, url: str) -> None:
    """Name the study's objectives once; a study that already names others is refused, since its
    trials' values would mean two things (e.g. val/price_error, then val/rmsle under one axis)."""
    if not metric_names:
        return
    named = study.metric_names
    if named is None:
        study.set_metric_names(list(metric_names))
    elif named != list(metric_names) and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SweepConfigError(f"study {study.study_name} in {masked_url(url)} optimises {', '.join(named)}, this sweep "
                               f"{', '.join(metric_names)}: set hydra.sweeper.study_name to a new name, or "
                               f"optimized_metric={named[0] if len(named) == 1 else named}")
    elif named != list(metric_names):  # no finished trial yet: nothing was measured under the old name
        study.set_metric_names(list(metric_names))


def _check_readable(storage: optuna.storages.RDBStorage, study: optuna.Study, url: str) -> None:
    """A damaged database (a disk or copy fault inside the file, not a truncated one) opens, and then fails
    at the first read of its trials, deep in SQLAlchemy: read them all now, and have SQLite check its pages."""
    try:
        if url.startswith("sqlite"):
            with storage.engine.connect() as connection:
                verdict = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check").fetchall()]
            if verdict != ["ok"]:
                raise sqlalchemy.exc.DatabaseError("PRAGMA quick_check", None, Exception("; ".join(verdict)[:200]))
        study.get_trials(deepcopy=False)
    except (sqlalchemy.exc.DatabaseError, optuna.exceptions.StorageInternalError) as err:
        cause = err
        while not isinstance(cause, sqlalchemy.exc.DatabaseError) and (cause.__cause__ or cause.__context__):
            cause = cause.__cause__ or cause.__context__
        first = str(getattr(cause, "orig", cause)).strip().splitlines()[0]
        raise SweepConfigError(f"hydra.sweeper.storage={masked_url(url)}: study {study.study_name} cannot be read ({first}): "
                               "the database is damaged: restore it from a copy, or start afresh with a new "
                               "hydra.sweeper.study_name and hydra.sweeper.storage (or hydra.sweep.dir)") from None


class _SpaceProbe:
    """Stands in for a trial to learn which distributions `suggest` asks for, without creating a trial."""

    def __init__(self) -> None:
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {}
        self.params: dict[str, Any] = {}
        self.user_attrs: dict[str, Any] = {}

    def _ask(self, name: str, dist: optuna.distributions.BaseDistribution, value: Any) -> Any:
        self.distributions[name], self.params[name] = dist, value
        return value

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._ask(name, optuna.distributions.CategoricalDistribution(choices), list(choices)[0])

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._ask(name, optuna.distributions.IntDistribution(low, high, log=log, step=step), low)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        return self._ask(name, optuna.distributions.FloatDistribution(low, high, log=log, step=step), low)

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def check_search_space(study: optuna.Study, suggest: Callable[[Trial], None]) -> None:
    """Refuse, before a trial exists, a search space the study cannot take.

    Optuna lets a numeric range change within a study, but not a parameter's choices or its kind
    ("CategoricalDistribution does not support dynamic value space"): it raised only once a trial was
    created, which then ended FAIL. A custom search space that needs a real trial is left to claim()."""
    probe = _SpaceProbe()
    try:
        suggest(probe)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - claim() runs it on a real trial and reports what fails
        return
    earlier: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            earlier.setdefault(name, dist)
    for name, dist in probe.distributions.items():
        if name not in earlier:
            continue
        try:
            optuna.distributions.check_distribution_compatibility(earlier[name], dist)
        except ValueError:
            raise SweepConfigError(f"study {study.study_name} swept {name} over {describe(earlier[name])}, and this command "
                                   f"over {describe(dist)}: Optuna cannot change a parameter's choices within a study: "
                                   f"start a new one with hydra.sweeper.study_name={study.study_name}-2 (a new sweep dir "
                                   f"too), or sweep {name} over {describe(earlier[name])}") from None


STREAMS = "pricer_sampler_streams"  # study user attr: how many sampler streams were handed out


def next_stream(study: optuna.Study, url: str, lock_path: Path) -> int:
    """A number no other process of this study was given (0, 1, 2, ...): the seed of its sampler mixes
    it in, so seeded sweeps started as the same command never draw one sequence (two commands on one
    storage, a rerun, the n_jobs workers). Counted under the locks that guard claims."""
    with file_lock(lock_path), database_lock(url, f"pricer: claim in {study.study_name}"):
        stream = int(study.user_attrs.get(STREAMS, 0))
        study.set_user_attr(STREAMS, stream + 1)
    return stream


def run_trials(study: optuna.Study, suggest: Callable[[Trial], None], launch: Callable[[Trial], JobReturn], *,
               url: str, n_trials: int, max_failures: float, lock_path: Path, grace_s: float,
               stop: SweepStop) -> None:
    """Claim, run and record trials until the budget is spent and nothing runs any more, or a signal stops it.

    Waiting for other workers' running trials matters: if one of them dies, its trial is
    re-queued after the grace period and this worker runs it.
    """
    said = 0.0  # when the last "waiting for" line was logged
    check_search_space(study, suggest)
    while failed_count(study) <= max_failures and stop.signum is None:
        trial = claim(study, suggest, url, n_trials, lock_path, grace_s)
        if trial is None:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            said = _say_what_it_waits_for(study, running, grace_s, said)
            time.sleep(min(grace_s / 2, 10))
            continue
        if stop.signum is not None:  # came while claiming: the trial waits for the next run
            requeue(study, trial, f"{signal.Signals(stop.signum).name} before its job started")
            return
        with heartbeat(study, trial):
            ret = _launch_guarded(study, trial, launch, stop)
        tell(study, trial, ret, stop)
        del ret  # a failed job's exception holds its frames, hence its model: free it now
        _release_memory()
    if stop.signum is None:
        log.error("%d trials failed, more than max_failure_rate allows: no new trials", failed_count(study))


def _say_what_it_waits_for(study: optuna.Study, running: list[FrozenTrial], grace_s: float, said: float) -> float:
    """Every 30 s while the budget is spent but trials run: which, and when a dead one is re-queued.

    After a SIGKILL of the sweep, the same command finds the killed trial RUNNING until its heartbeat
    is older than the grace period; without this line it would print nothing for that long."""
    if time.monotonic() - said < 30:
        return said
    ages = heartbeat_ages(study)
    for t in running:
        age = ages.get(t._trial_id)
        if age is None:
            log.info("waiting for trial %d (no heartbeat yet)", t.number)
        else:
            log.info("waiting for trial %d: last heartbeat %.0f s ago; re-queued if none comes for %.0f s (in %.0f s at the latest)",
                     t.number, age, grace_s, max(grace_s - age, 0))
    return time.monotonic()


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since each running trial's last heartbeat, by trial id, read as Optuna's stale check reads them."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # a cached storage wraps the RDB one
    if not hasattr(storage, "scoped_session"):
        return {}
    with _create_scoped_session(storage.scoped_session) as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = (session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                .join(models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id)
                .filter(models.TrialModel.study_id == study._study_id, models.TrialModel.state == TrialState.RUNNING)
                .all())
    return {trial_id: (now - beat.replace(tzinfo=None)).total_seconds() for trial_id, beat in rows}


def claim(study: optuna.Study, suggest: Callable[[Trial], None], url: str, n_trials: int, lock_path: Path,
          grace_s: float) -> Trial | None:
    """A new (or re-queued) trial with its params, or None when the budget is spent.

    Params are drawn under the lock too, so the sampler sees every running trial's
    params (TPE's constant liar) and two workers do not draw the same point.
    """
    with file_lock(lock_path), database_lock(url, f"pricer: claim in {study.study_name}"):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        adopted = adopt_orphaned_job(study)  # a dead sweep's SLURM job runs on: wait for it, never submit it twice
        if adopted is not None:
            return adopted
        optuna.storages.fail_stale_trials(study)  # re-queues trials of dead workers
        _fail_unclaimed(study, grace_s)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number not in before and FAIL_REASON not in t.user_attrs:
                if _retries_spent(t):
                    log.error("trial %d failed: %s", t.number, _died_reason(t))
                else:
                    log.warning("trial %d: its worker stopped beating (killed, or its machine lost): re-queued to resume "
                                "from its last checkpoint", t.number)
        if used_count(study) >= n_trials:
            return None
        trial = study.ask()
        study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
        for key in (PRUNED_AT, NAN_AT):  # a re-queued trial inherits its predecessor's user attrs
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        try:
            suggest(trial)
        except Exception as err:  # a broken custom_search_space: fail the trial, stop this worker
            trial.set_user_attr(FAIL_REASON, _reason(err))
            study.tell(trial, state=TrialState.FAIL)
            raise
        return trial


def adopt_orphaned_job(study: optuna.Study) -> Trial | None:
    """A RUNNING trial whose heartbeat stopped while its SLURM job runs on: this worker takes it over.

    The heartbeat stopped with the sweep process that submitted the job (killed, or its login node
    lost), but the job does not depend on that process. Failed and re-queued as Optuna does with a
    dead worker's trial, it would be submitted again: a second job on the same run. The job recorded
    itself on its trial (pricer.trial.SLURM_JOB); the sweep run again beats for the trial and reads the
    job's result when it ends (the launch of an ADOPTED trial is a wait, not an sbatch).
    """
    storage = study._storage
    if not hasattr(storage, "_get_stale_trial_ids"):
        return None
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        job = storage.get_trial(trial_id).user_attrs.get(SLURM_JOB)
        if job is None:
            continue
        storage.record_heartbeat(trial_id)  # no longer stale: fail_stale_trials leaves it alone
        trial = Trial(study, trial_id)
        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr(ADOPTED, job["id"])
        log.info("trial %d: its SLURM job %s runs on without the sweep that submitted it: waiting for it", trial.number,
                 job["id"])
        return trial
    return None


def _fail_unclaimed(study: optuna.Study, grace_s: float) -> None:
    """Fail RUNNING trials whose worker died between ask() and its first heartbeat.

    Optuna never calls a trial without a heartbeat stale, so such a trial would count as
    running forever. The WORKER attr is written right after the first heartbeat: a trial
    still without it after the grace period has no live worker (and no params to retry).
    """
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if WORKER not in t.user_attrs and (now - t.datetime_start).total_seconds() > grace_s:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)


def used_count(study: optuna.Study) -> int:
    """Trials that count against n_trials: done, running, or failed for a reason."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in _COUNTED or _failed(t) for t in trials)


def failed_count(study: optuna.Study) -> int:
    return sum(_failed(t) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def _failed(trial: FrozenTrial) -> bool:
    """A failure that counts (n_trials, max_failure_rate): the job failed with a reason, or its worker died
    more often than the retry limit. A death within the limit is not one: its trial was re-queued."""
    return trial.state == TrialState.FAIL and (FAIL_REASON in trial.user_attrs or _retries_spent(trial))


def _retries_spent(trial: FrozenTrial) -> bool:
    return len(_retry_history(trial)) >= MAX_RETRY


def _retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials this one retries, as Optuna's retry callback recorded them."""
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna 5: the sweeper relies on it knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


def _died_reason(trial: FrozenTrial) -> str:
    """Why a FAIL trial without a job error failed: read from Optuna's retry history (a finished trial takes no attrs)."""
    return (f"its worker died {len(_retry_history(trial)) + 1} times "
            f"(killed, or its machine lost), more than the retry limit {MAX_RETRY}")


def fail_reason(trial: FrozenTrial) -> str | None:
    """The reason a failed trial shows in the summary and pricer.compare."""
    if trial.state != TrialState.FAIL:
        return None
    return trial.user_attrs.get(FAIL_REASON) or (_died_reason(trial) if _retries_spent(trial) else None)


def _launch_guarded(study: optuna.Study, trial: Trial, launch: Callable[[Trial], JobReturn],
                    stop: SweepStop) -> JobReturn:
    """Run the job; an error outside the job (launcher, composition) fails only this trial.

    A signal this process's handler raised (Interrupted) or a forced Ctrl-C (KeyboardInterrupt)
    re-queues the trial as an interrupted one: a rerun resumes it.

    stop.job() is entered inside the try: SweepStop raises Interrupted wherever Python runs the
    handler while the job window is open, its opening and closing lines included. Outside the try,
    an Interrupted raised there would escape run_trials, leaving the trial RUNNING untold and the
    worker dead with exit 1. A job that had already returned keeps its outcome.
    """
    ret = None
    try:
        with stop.job():
            ret = launch(trial)
    except Exception as err:  # noqa: BLE001 - any launcher error is this trial's failure; Interrupted: tell() re-queues
        if ret is None:
            ret = JobReturn(status=JobStatus.FAILED, _return_value=err)
    except BaseException:
        requeue(study, trial, "KeyboardInterrupt")
        stop.stop(signal.SIGINT)
        raise
    return ret


def requeue(study: optuna.Study, trial: Trial, why: str) -> None:
    """Put a trial stopped by a signal back in the queue: the same trial, WAITING, with its params and run_dir.

    Not FAIL: it did not fail, and must not count against max_failure_rate. Optuna's
    storage allows RUNNING -> WAITING; study.ask() pops it like an enqueued trial.
    """
    trial.set_user_attr(INTERRUPTED, why)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
    log.warning("trial %d interrupted (%s): it waits, rerun the same command to resume it", trial.number, why)


def tell(study: optuna.Study, trial: Trial, ret: JobReturn, stop: SweepStop) -> None:
    """Record the job's outcome: COMPLETE, PRUNED (TrialPruned), WAITING (Interrupted) or FAIL with its reason."""
    if ret.hydra_cfg is not None:
        trial.set_user_attr("output_dir", ret.hydra_cfg.hydra.runtime.output_dir)
    error = ret._return_value if ret.status == JobStatus.FAILED else None
    signum = _interrupting_signal(error, stop)
    if signum is not None:
        requeue(study, trial, str(error) if isinstance(error, Interrupted) else
                f"{signal.Signals(signum).name} during its job ({type(error).__name__})")
        stop.stop(signum)
    elif isinstance(error, optuna.TrialPruned):
        _record(study, trial, state=TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, error)
    else:
        values, reason = (None, _reason(error)) if error is not None else _values(ret._return_value, study)
        if reason is None:
            _record(study, trial, values)
            log.info("trial %d: %s with %s", trial.number, values, trial.params)
        else:
            trial.set_user_attr(FAIL_REASON, reason)
            _record(study, trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason, exc_info=None if _is_slurm_end(error) else error)
    if error is not None:
        error.__traceback__ = None  # even if a Hydra callback kept the JobReturn


def _interrupting_signal(error: BaseException | None, stop: SweepStop) -> int | None:
    """The signal that ended a failed job, if one did.

    SweepStop raises Interrupted wherever the job happens to be, and a library there may
    re-raise it as its own error (OmegaConf does, for an error inside a config access): the
    Interrupted is then in the chain. A job that failed while this worker was handling a
    signal counts as interrupted too: a rerun runs it again, and a real failure fails then.
    """
    interrupted = interruption_in(error)
    if interrupted is not None:
        return interrupted.signum
    return stop.signum if error is not None else None


def _record(study: optuna.Study, trial: Trial, values: list[float] | None = None,
            state: TrialState | None = None) -> None:
    """study.tell, where a GridSampler that finds its grid visited calls study.stop(): Optuna allows that
    only inside study.optimize and raises RuntimeError after storing the trial. run_trials stops on its own
    (n_trials is capped at the grid's size), so only an error that left the trial unrecorded is raised."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError:
        if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            raise


def _values(returned: Any, study: optuna.Study) -> tuple[list[float] | None, str | None]:
    """The objective(s) as floats, or the reason they are unusable."""
    many = returned if isinstance(returned, (list, tuple)) else [returned]
    try:
        values = [float(v) for v in many]
    except (TypeError, ValueError):
        return None, f"the job returned {returned!r}, not a number"
    if len(values) != len(study.directions):
        return None, f"the job returned {len(values)} values for {len(study.directions)} directions"
    if any(math.isnan(v) or math.isinf(v) for v in values):
        return None, f"the objective is not finite: {values}"
    return values, None


def _reason(error: BaseException) -> str:
    if _is_slurm_end(error):
        return _slurm_reason(error)
    text = f"{type(error).__name__}: {error}"
    if "out of memory" in text.lower() or "OutOfMemory" in text:
        text = f"out of memory ({text})"
    return text[:1000]


def _is_slurm_end(error: BaseException | None) -> bool:
    """submitit's word for a job that ended without a result (scancel, a lost node, killed) or failed outside the task."""
    return error is not None and type(error).__module__.startswith("submitit")


def _slurm_reason(error: BaseException) -> str:
    """One line from submitit's many: the SLURM job, the state SLURM gives it (CANCELLED, NODE_FAIL, TIMEOUT, ...)
    or the job's last error line, and where its log is."""
    import re

    text = str(error)
    job, state = re.search(r"Job (\S+) \(task: \d+\)", text), re.search(r"\(state: ([^)]*)\)", text)
    if job and state:
        log_path = re.search(r"with path (\S+)_result\.pkl", text)
        where = f"; its log: {log_path.group(1)}_log.err" if log_path else ""
        return f"SLURM job {job.group(1)} ended without a result (state {state.group(1)}){where}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    last_error = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), lines[0] if lines else "")
    return f"SLURM job failed: {last_error}"[:1000]


def _release_memory() -> None:
    """Free what the last job left on the GPU before the next job of this process starts."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def results(study: optuna.Study) -> dict[str, Any]:
    """optimization_results.yaml: the best trial (or the Pareto front) and counts by state."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    out: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": counts}
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return out
    if len(study.directions) == 1:
        best = study.best_trial
        out.update(best_trial=best.number, best_params=best.params, best_value=best.value)
    else:
        out["solutions"] = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
    return out
