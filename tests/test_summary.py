"""The sweep summary's table: best first, which for a hit rate means highest first."""

from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from pricer.config import sweep_objective
from pricer.summary import SweepSummary


def finish(summary: SweepSummary, sweep_dir: Path, metric: str, num: int, value: float | None) -> None:
    config = OmegaConf.create({"optimized_metric": metric, "hydra": {
        "job": {"num": num}, "overrides": {"task": [f"lora.lora_dropout=0.{num + 1}"]}, "sweep": {"dir": str(sweep_dir)}}})
    job = JobReturn()
    job.status = JobStatus.COMPLETED if value is not None else JobStatus.FAILED
    job.return_value = value if value is not None else RuntimeError("out of memory")
    summary.on_job_end(config, job)


@pytest.mark.parametrize(("metric", "order"), [("test/price_error", [1, 0, 2, 3]), ("test/hit_rate", [2, 0, 1, 3])])
def test_summary_ranks_best_first_in_the_metrics_direction(tmp_path: Path, metric: str, order: list[int]) -> None:
    summary = SweepSummary()
    for num, value in enumerate([0.4, 0.2, 0.9, None]):
        finish(summary, tmp_path, metric, num, value)
    summary.on_multirun_end(OmegaConf.create({"optimized_metric": metric, "hydra": {"sweep": {"dir": str(tmp_path)}}}))
    written = yaml.safe_load((tmp_path / "summary.yaml").read_text())
    assert written["metric"] == sweep_objective(metric) == metric.replace("test/", "val/"), "ranked on validation"
    assert [job["job"] for job in written["jobs"]] == order
    assert written["jobs"][-1]["status"] == "FAILED" and written["jobs"][-1]["objective"] is None
