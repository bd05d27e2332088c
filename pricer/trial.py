"""The job side of a sweep trial: report the objective as training goes, stop when pruned.

The sweeper (hydra_plugins/pricer_optuna_sweeper) starts each job with the study's
storage URL and name in the environment, and the trial number through the job's
`hydra.job.env_set` (so it also reaches jobs a launcher runs elsewhere, e.g. SLURM).
Reading them here keeps pricer.train free of sweep arguments: outside a sweep every
function is a no-op.

The pruning decision is taken in the job, right after each report, by the study's
pruner: the sweeper stores the pruner's config in the study (`PRUNER_ATTR`), the one
place every worker and job can read. Importing this module does not import Optuna.
"""

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV_STORAGE = "PRICER_OPTUNA_STORAGE"
ENV_STUDY = "PRICER_OPTUNA_STUDY"
ENV_TRIAL = "PRICER_OPTUNA_TRIAL"
ENV_METRIC = "PRICER_OPTUNA_METRIC"
PRUNER_ATTR = "pricer_pruner"  # study user attr: the pruner's {_target_: ..., kwargs}
# trial user attrs written by the job, read by raise_if_pruned and pricer.compare
PRUNED_AT = "pruned_at_step"
NAN_AT = "nan_at_step"
RUN_DIR = "run_dir"  # the dir the trial's run trains in: an interrupted or re-queued trial resumes it
SLURM_JOB = "slurm_job"  # {"id", "folder"}: the SLURM job (submitit) running the trial; a sweep run again waits for it


def study_address(sweep_dir: Path, storage: str | None, study_name: str | None) -> tuple[str, str]:
    """Storage URL and study name of a pricer_optuna sweep: by default SQLite in the sweep dir, named like it."""
    return storage or f"sqlite:///{sweep_dir / 'optuna.db'}", study_name or sweep_dir.name


def current_trial_info() -> dict | None:
    """Number, study and params of the trial this job runs (for W&B), or None outside a sweep.

    The storage URL is left out: it may hold a database password.
    """
    if _trial_env() is None:
        return None
    trial = _trial(*_trial_env())
    return {"number": trial.number, "study_name": trial.study.study_name, "params": dict(trial.params)}


def report(value: float, step: int, series: str | None = None) -> bool:
    """Report an intermediate objective; True when training should stop (pruned, or NaN).

    A NaN means the run diverged: it is not reported (pruners would read it as a value)
    but marked, so raise_if_pruned fails the trial instead of pruning it. A `series` of
    pricer's own (the loss, a price error, a hit rate) whose better side is not the
    study's direction is never reported: a pruner, this trial's or a later sweep's on
    the same study, would keep the worst trials (a loss under a maximised hit rate).
    """
    if _trial_env() is None:
        return False
    trial = _trial(*_trial_env())
    if len(trial.study.directions) > 1:
        return False  # Optuna prunes single-objective studies only
    if math.isnan(value):
        trial.set_user_attr(NAN_AT, step)
        return True
    if series is not None and not _runs_with(series, trial.study.direction.name.lower()):
        return False
    trial.report(value, step)
    if trial.should_prune():
        trial.set_user_attr(PRUNED_AT, step)
        return True
    return False


def raise_if_pruned() -> None:
    """Call after trainer.train() returns: raise what report() decided, after a clean shutdown.

    optuna.TrialPruned makes the sweeper record the trial PRUNED; FloatingPointError
    (NaN objective) makes it FAIL.
    """
    if _trial_env() is None:
        return
    import optuna

    from pricer.distributed import on_main

    # several ranks: rank 0's trial holds what report() decided (another rank's trial is a cached copy)
    attrs = on_main(lambda: _trial(*_trial_env()).user_attrs)
    if attrs.get(NAN_AT) is not None:  # None: reset on a re-queued trial
        raise FloatingPointError(f"the objective became NaN at step {attrs[NAN_AT]}")
    if attrs.get(PRUNED_AT) is not None:
        raise optuna.TrialPruned(f"pruned at step {attrs[PRUNED_AT]}")


def _runs_with(series: str, direction: str) -> bool:
    """Whether a series' better side is `direction`; True for a series pricer does not know (the user's own)."""
    from pricer.objectives import HIGHER_IS_BETTER, SCORES

    name = series.replace("/", "_")
    if name in ("loss", "train_loss", "eval_loss"):
        return direction == "minimize"
    score = next((s for s in SCORES if name.endswith(s)), None)
    if score is None:
        return True
    return direction == ("maximize" if f"val/{score}" in HIGHER_IS_BETTER else "minimize")


def set_trial_attrs(**attrs: Any) -> None:
    """Record run facts on the trial (hub_repo=..., wandb_run=...): pricer.compare shows them.

    pricer.train calls this as soon as its run dir holds run.json, before training: the
    trial then also records that dir (RUN_DIR), so the sweeper can resume the run if the
    trial is interrupted or its worker dies. A trial that resumes a run keeps its RUN_DIR.
    """
    from pricer.distributed import is_main

    if _trial_env() is None or not is_main():  # several ranks: rank 0 records the run's facts once
        return
    trial = _trial(*_trial_env())
    if RUN_DIR not in trial.user_attrs and _job_run_dir() is not None:
        trial.set_user_attr(RUN_DIR, _job_run_dir())
    job = slurm_job()
    if job is not None and trial.user_attrs.get(SLURM_JOB) != job:
        trial.set_user_attr(SLURM_JOB, job)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def resumable_run_dir() -> str | None:
    """The run dir this trial already trains in, when its job starts again; None for a fresh trial.

    A SLURM job that is requeued (`scontrol requeue`, preemption, its time limit) runs again with
    the same overrides, so nothing on its command line says which run to continue: the trial
    does (RUN_DIR, recorded by its first attempt). pricer.train passes it to claim_run as
    `resume=`, so the job continues that run (dir, run name, Hub repo, W&B run) from its last
    complete checkpoint. A finished or pruned run is not continued (its trial is told already).

    Called first thing in a job, it also records the job on the trial (SLURM_JOB): a sweep run
    again after its process died then waits for this job rather than submitting the trial again.
    A trial already ended (its sweep gave up on this job, e.g. before it started, and re-queued
    the trial as a new one) is refused, so the job does not train it a second time.
    """
    if _trial_env() is None:
        return None
    import optuna

    from pricer.resume import ENDED, RUN_FILE, ResumeError, read_run

    trial = _trial(*_trial_env())
    job = slurm_job()
    try:
        if job is not None and trial.user_attrs.get(SLURM_JOB) != job:
            trial.set_user_attr(SLURM_JOB, job)
        ended = trial.study._storage.get_trial(trial._trial_id).state.is_finished()
    except optuna.exceptions.UpdateFinishedTrialError:
        ended = True
    if ended:
        raise ResumeError(f"trial {trial.number} of study {trial.study.study_name} has ended already (its sweep stopped "
                          "waiting for this job and re-queued it): not training it twice")
    run_dir = trial.user_attrs.get(RUN_DIR)
    if not run_dir or not (Path(run_dir) / RUN_FILE).exists() or read_run(Path(run_dir)).get("status") in ENDED:
        return None
    return run_dir


def slurm_job() -> dict[str, str] | None:
    """This job's SLURM id and submitit folder, as submitit names them, or None outside a submitit SLURM job."""
    if "SLURM_JOB_ID" not in os.environ or "SUBMITIT_FOLDER" not in os.environ:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    folder = str(Path(os.environ["SUBMITIT_FOLDER"]).absolute())  # the job runs where sbatch ran: a relative sweep dir
    return {"id": f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"], "folder": folder}


def _job_run_dir() -> str | None:
    """The job's output dir if a pricer run lives in it (run.json): a fresh run trains in its job's dir."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    out = Path(HydraConfig.get().runtime.output_dir)
    return str(out.absolute()) if (out / "run.json").exists() else None


def trial_callbacks(eval_during_training: bool = False) -> list:
    """[a TrainerCallback reporting to the trial] inside a sweep trial, [] otherwise.

    What it reports: the objective as scored during training (PRICER_OPTUNA_METRIC, set
    by the sweeper; `test/price_error` is logged as `eval_price_error`) when the run
    scores during training, else the train loss at each log step, and either only where
    its better side is the study's direction (report's `series`). Never both in one
    trial: Optuna's median/percentile pruners compare a trial's best value so far, so a
    loss of 1.2 reported before the first $300 price error would shield the trial.
    Pass `eval_during_training=True` when a callback of the run logs the metric
    (pricer's evaluation.eval_steps); Trainer evaluation (eval_strategy) is seen alone.
    """
    if _trial_env() is None:
        return []
    return [_reporting_callback(os.environ.get(ENV_METRIC) or "eval_loss", eval_during_training)]


def _reporting_callback(metric: str, eval_during_training: bool):
    """Built on call so that importing pricer.trial does not import transformers."""
    from transformers import TrainerCallback

    from pricer.distributed import on_main

    class OptunaReportCallback(TrainerCallback):
        """Reports one series per trial at each log; stops training when the trial is pruned.

        Setting should_training_stop (rather than raising here) lets the trainer end
        normally (checkpoint, W&B); raise_if_pruned tells the sweeper afterwards.
        """

        def __init__(self) -> None:
            self.use_metric = eval_during_training and metric not in ("train_loss", "loss")

        def on_train_begin(self, args, state, control, **kwargs):
            if args.eval_strategy != "no" and metric not in ("train_loss", "loss"):
                self.use_metric = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss = logs.get("loss")  # "train_loss" is the end-of-training summary
            if loss is not None and math.isnan(loss):
                value = loss  # diverged: report() stops the run and fails the trial
            else:
                value = _pick(logs, metric) if self.use_metric else loss
            series = "loss" if value is loss else metric
            # several ranks (a trial of k GPUs): rank 0 reports and decides, every rank stops with it (a rank
            # that trained on would wait in its next all-reduce for one that stopped); every rank logs alike
            if on_main(lambda: value is not None and report(float(value), state.global_step, series)):
                control.should_training_stop = True

    return OptunaReportCallback()


def _pick(metrics: dict, name: str) -> float | None:
    """The objective as logged during training: `eval/price_error` and `eval_price_error` are one
    metric, and objective `test/price_error` (scored after training) is `eval_price_error` during it."""
    flat = name.replace("/", "_")
    for key in (name, flat, f"eval_{name.rsplit('/', 1)[-1]}"):
        if key in metrics:
            return metrics[key]
    return None


def _trial_env() -> tuple[str, str, int] | None:
    if ENV_TRIAL not in os.environ:
        return None
    return os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL])


def open_storage(url: str, **kwargs: Any):
    """An RDBStorage; SQLite waits for the lock (workers write at once) instead of failing."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


@lru_cache(maxsize=1)
def _trial(storage_url: str, study_name: str, number: int):
    """The running trial, loaded once per job, with the study's pruner."""
    import optuna
    from hydra.utils import instantiate

    # the sweeper created the tables and checked their version: skip both (~0.1 s per job)
    storage = open_storage(storage_url, skip_compatibility_check=True, skip_table_creation=True)
    study_id = storage.get_study_id_from_name(study_name)
    spec = storage.get_study_user_attrs(study_id).get(PRUNER_ATTR)
    pruner = instantiate(spec) if spec else optuna.pruners.NopPruner()
    # the sampler is never asked for a value here; RandomSampler is the cheapest to build
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
