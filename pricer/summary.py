"""A Hydra callback that ends a --multirun with a table of every job's objective.

Hydra's basic sweeper returns the jobs' values but prints nothing; a sweep of 3
runs should end with the 3 numbers side by side, best first (highest first for
hit rates), each beside its test score, and a YAML copy in the sweep dir. The jobs
return validation scores (pricer.config.sweep_objective): the test column is the
report, never what was ranked on.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pricer.config import HIGHER_IS_BETTER, sweep_objective

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
        if not self.rows:
            return
        metric = sweep_objective(config.get("optimized_metric", "objective"))
        sign = -1 if metric in HIGHER_IS_BETTER else 1
        rows = sorted(self.rows, key=lambda r: math.inf if r["objective"] is None else sign * r["objective"])
        lines = [f"{'job':>4}  {metric + ' (optimised)':>28}  {'test/price_error':>16}  {'status':<9}  overrides"]
        for row in rows:
            value = "-" if row["objective"] is None else f"{row['objective']:.4f}"
            test = "-" if row["test/price_error"] is None else f"{row['test/price_error']:.4f}"
            lines.append(f"{row['job']:>4}  {value:>28}  {test:>16}  {row['status']:<9}  {row['overrides']}")
        log.info("sweep summary (optimised: %s):\n%s", metric, "\n".join(lines))
        Path(config.hydra.sweep.dir, "summary.yaml").write_text(yaml.safe_dump({"metric": metric, "jobs": rows}))


def _pruned(job_return: JobReturn) -> bool:
    """A pruned trial ends its job with optuna.TrialPruned (Hydra keeps it in `_return_value`)."""
    from optuna import TrialPruned

    return isinstance(getattr(job_return, "_return_value", None), TrialPruned)
