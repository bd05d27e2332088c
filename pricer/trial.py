"""The job side of a sweep trial: report the objective as training goes, stop when pruned.

The sweeper (hydra_plugins/pricer_optuna_sweeper) starts each job with its trial's
storage URL, study name and number in the environment (through `hydra.job.env_set`,
so it reaches jobs that a launcher runs elsewhere, e.g. on SLURM). Reading them here
keeps pricer.train free of sweep arguments: outside a sweep every function is a no-op.

The pruning decision is taken in the job, right after each report, by the study's
pruner: the sweeper stores the pruner's config in the study (`PRUNER_ATTR`), the one
place every worker and job can read. Importing this module does not import Optuna.
"""

import math
import os
from functools import lru_cache
from typing import Any

ENV_STORAGE = "PRICER_OPTUNA_STORAGE"
ENV_STUDY = "PRICER_OPTUNA_STUDY"
ENV_TRIAL = "PRICER_OPTUNA_TRIAL"
ENV_METRIC = "PRICER_OPTUNA_METRIC"
PRUNER_ATTR = "pricer_pruner"  # study user attr: the pruner's {_target_: ..., kwargs}
# trial user attrs written by the job, read by raise_if_pruned and pricer.compare
PRUNED_AT = "pruned_at_step"
NAN_AT = "nan_at_step"


def current_trial_info() -> dict | None:
    """Number, study and params of the trial this job runs (for W&B), or None outside a sweep.

    The storage URL is left out: it may hold a database password.
    """
    if _trial_env() is None:
        return None
    trial = _trial(*_trial_env())
    return {"number": trial.number, "study_name": trial.study.study_name, "params": dict(trial.params)}


def report(value: float, step: int) -> bool:
    """Report an intermediate objective; True when training should stop (pruned, or NaN).

    A NaN means the run diverged: it is not reported (pruners would read it as a value)
    but marked, so raise_if_pruned fails the trial instead of pruning it.
    """
    if _trial_env() is None:
        return False
    trial = _trial(*_trial_env())
    if len(trial.study.directions) > 1:
        return False  # Optuna prunes single-objective studies only
    if math.isnan(value):
        trial.set_user_attr(NAN_AT, step)
        return True
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

    attrs = _trial(*_trial_env()).user_attrs
    if NAN_AT in attrs:
        raise FloatingPointError(f"the objective became NaN at step {attrs[NAN_AT]}")
    if PRUNED_AT in attrs:
        raise optuna.TrialPruned(f"pruned at step {attrs[PRUNED_AT]}")


def set_trial_attrs(**attrs: Any) -> None:
    """Record run facts on the trial (hub_repo=..., wandb_run=...): pricer.compare shows them."""
    if _trial_env() is None:
        return
    trial = _trial(*_trial_env())
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def trial_callbacks() -> list:
    """[a TrainerCallback reporting to the trial] inside a sweep trial, [] otherwise."""
    if _trial_env() is None:
        return []
    return [_reporting_callback(os.environ.get(ENV_METRIC) or "eval_loss")]


def _reporting_callback(metric: str):
    """Built on call so that importing pricer.trial does not import transformers."""
    from transformers import TrainerCallback

    class OptunaReportCallback(TrainerCallback):
        """Reports `metric` at each evaluation, else the train loss at each log step.

        Setting should_training_stop (rather than raising here) lets the trainer end
        normally: the sweeper learns of the pruning from raise_if_pruned afterwards.
        """

        def __init__(self) -> None:
            self.saw_eval = False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = _pick(metrics or {}, metric)
            if value is not None:
                self.saw_eval = True
                self._report(value, state.global_step, control)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not self.saw_eval and logs and "loss" in logs:  # "train_loss" is the end summary
                self._report(logs["loss"], state.global_step, control)

        def _report(self, value: float, step: int, control) -> None:
            if report(float(value), step):
                control.should_training_stop = True

    return OptunaReportCallback()


def _pick(metrics: dict, name: str) -> float | None:
    """`eval/price_error` (W&B style) and `eval_price_error` (Trainer style) are the same metric."""
    flat = name.replace("/", "_")
    for key in (name, flat, f"eval_{flat}"):
        if key in metrics:
            return metrics[key]
    return None


def _trial_env() -> tuple[str, str, int] | None:
    if ENV_TRIAL not in os.environ:
        return None
    return os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL])


def open_storage(url: str, **heartbeat: Any):
    """An RDBStorage; SQLite waits for the lock (workers write at once) instead of failing."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)


@lru_cache(maxsize=1)
def _trial(storage_url: str, study_name: str, number: int):
    """The running trial, loaded once per job, with the study's pruner."""
    import optuna
    from hydra.utils import instantiate

    storage = open_storage(storage_url)
    study_id = storage.get_study_id_from_name(study_name)
    spec = storage.get_study_user_attrs(study_id).get(PRUNER_ATTR)
    pruner = instantiate(spec) if spec else optuna.pruners.NopPruner()
    # the sampler is never asked for a value here; RandomSampler is the cheapest to build
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
