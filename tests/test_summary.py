"""The sweep summary's table: best first, which for a hit rate means highest first."""

from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from pricer.objectives import sweep_objective
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


def test_a_pricer_optuna_sweep_is_summarised_from_its_study(tmp_path: Path, monkeypatch) -> None:
    """Every trial of the study once, whatever jobs this process saw (here: none), with its state."""
    import optuna

    s = optuna.create_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    dist = {"lora.lora_dropout": optuna.distributions.FloatDistribution(0.0, 0.2)}
    for value, state, attrs in [(30.0, "COMPLETE", {"test/price_error": 40.0}), (None, "FAIL", {"fail_reason": "oom"}),
                                (None, "FAIL", {}), (20.0, "COMPLETE", {}), (None, "WAITING", {"run_dir": "x"})]:
        s.add_trial(optuna.trial.create_trial(params={"lora.lora_dropout": 0.1}, distributions=dist, value=value,
                                              state=optuna.trial.TrialState[state], user_attrs=attrs))
    config = OmegaConf.create({"optimized_metric": "val/price_error", "hydra": {
        "sweep": {"dir": str(tmp_path)},
        "sweeper": {"_target_": "hydra_plugins.pricer_optuna_sweeper.optuna_sweeper.PricerOptunaSweeper",
                    "storage": None, "study_name": "sweep"}}})
    monkeypatch.delenv("PRICER_SWEEP_WORKER", raising=False)
    SweepSummary().on_multirun_end(config)
    jobs = yaml.safe_load((tmp_path / "summary.yaml").read_text())["jobs"]
    assert [(j["job"], j["status"]) for j in jobs] == [(3, "COMPLETED"), (0, "COMPLETED"), (1, "FAILED"), (2, "RETRIED"),
                                                       (4, "WAITING")]
    assert jobs[1]["test/price_error"] == 40.0 and jobs[1]["overrides"] == "lora.lora_dropout=0.1"

    (tmp_path / "summary.yaml").unlink()
    monkeypatch.setenv("PRICER_SWEEP_WORKER", "1")  # a worker of the sweep: the sweep process summarises
    SweepSummary().on_multirun_end(config)
    assert not (tmp_path / "summary.yaml").exists()
