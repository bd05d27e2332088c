"""A Hydra callback that ends a --multirun with a table of every job's objective.

Hydra's basic sweeper returns the jobs' values but prints nothing; a sweep of 3
runs should end with the 3 numbers side by side, best first (highest first for
hit rates), each beside its test score, and a YAML copy in the sweep dir. The jobs
return validation scores (pricer.config.sweep_objective): the test column is the
report, never what was ranked on.

A pricer_optuna sweep is summarised from its study, not from the jobs this process
saw: with n_jobs>1 each worker process sees only its own trials, with a SLURM launcher
this process sees none, and a resumed study holds the trials of earlier runs too. The
study lists every trial once. Its workers write no summary; the sweep process does.
"""

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pricer.objectives import HIGHER_IS_BETTER, sweep_objective

log = logging.getLogger("pricer")


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.job.num", default=None) is None:
            return  # a single run: no sweep to summarise
        failed = job_return.status != JobStatus.COMPLETED
        value = None if failed else job_return.return_value
        scores = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir", default=""))) / "adapter" / "metrics.json"
        test = json.loads(scores.read_text()).get("test/price_error") if scores.exists() and not failed else None
        status = "COMPLETED" if not failed else "PRUNED" if _pruned(job_return) else "FAILED"
        self.rows.append(
            {
                "job": config.hydra.job.num,
                "overrides": " ".join(config.hydra.overrides.task),
                "objective": float(value) if isinstance(value, (int, float)) else None,
                "test/price_error": test,  # the report beside what was optimised
                "status": status,
            }
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("PRICER_SWEEP_WORKER") is not None:
            return  # a worker of a pricer_optuna sweep: the sweep process summarises the whole study
        address = _study_address(config)
        rows = _study_rows(*address) if address is not None else self.rows
        if not rows:
            return
        metric = sweep_objective(config.get("optimized_metric", "objective"))
        sign = -1 if metric in HIGHER_IS_BETTER else 1
        rows = sorted(rows, key=lambda r: math.inf if r["objective"] is None else sign * r["objective"])
        lines = [f"{'job':>4}  {metric + ' (optimised)':>28}  {'test/price_error':>16}  {'status':<9}  overrides"]
        for row in rows:
            value = "-" if row["objective"] is None else f"{row['objective']:.4f}"
            test = "-" if row["test/price_error"] is None else f"{row['test/price_error']:.4f}"
            lines.append(f"{row['job']:>4}  {value:>28}  {test:>16}  {row['status']:<9}  {row['overrides']}")
        log.info("sweep summary (optimised: %s):\n%s", metric, "\n".join(lines))
        Path(config.hydra.sweep.dir, "summary.yaml").write_text(yaml.safe_dump({"metric": metric, "jobs": rows}))


def _study_address(config: DictConfig) -> tuple[str, str] | None:
    """Storage URL and study name when the sweeper is pricer_optuna, else None (Hydra's basic sweeper)."""
    from pricer.trial import study_address

    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith("PricerOptunaSweeper"):
        return None
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    return study_address(sweep_dir, sweeper.get("storage"), sweeper.get("study_name"))


def _study_rows(url: str, name: str) -> list[dict[str, Any]]:
    """One row per trial of the study, in the jobs' row format (job = trial number)."""
    import optuna

    from pricer.trial import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=optuna.samplers.RandomSampler())
    return [
        {
            "job": t.number,
            "overrides": " ".join(f"{key}={value}" for key, value in t.params.items()),
            "objective": t.values[0] if t.state == optuna.trial.TrialState.COMPLETE else None,
            "test/price_error": t.user_attrs.get("test/price_error"),
            "status": _trial_status(t),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def _trial_status(trial: Any) -> str:
    """The jobs' status words; a FAIL without a reason is a dead worker's trial, retried as a later one."""
    from hydra_plugins.pricer_optuna_sweeper._study import fail_reason  # the study's own rule (retry limit)

    state = trial.state.name
    if state == "FAIL":
        return "FAILED" if fail_reason(trial) else "RETRIED"
    return {"COMPLETE": "COMPLETED"}.get(state, state)  # PRUNED, WAITING (interrupted: resumes), RUNNING


def _pruned(job_return: JobReturn) -> bool:
    """A pruned trial ends its job with optuna.TrialPruned (Hydra keeps it in `_return_value`)."""
    from optuna import TrialPruned

    return isinstance(getattr(job_return, "_return_value", None), TrialPruned)
