"""What a run can return to a sweeper, which way each is better, and what a sweep selects on.

Shared by the run (pricer.train), the trial's reports (pricer.trial), the sweep's summary and
comparison (pricer.summary, pricer.compare) and the pricer_optuna sweeper.
"""

SCORES = ("price_error", "rmsle", "median_error", "hit_rate")
# val/: the validation slice held out of the train split, for sweeps; test/: the course's report
OBJECTIVES = (*(f"val/{s}" for s in SCORES), *(f"test/{s}" for s in SCORES), "train_loss")
HIGHER_IS_BETTER = ("val/hit_rate", "test/hit_rate")  # the other objectives are errors and losses
REPORTED_SCORES = ("val/price_error", "test/price_error", "test/hit_rate")  # a trial's context beside its objective


def sweep_objective(metric: str) -> str:
    """What a sweep's runs return for `optimized_metric`: a test/ score's validation twin, so no
    sampler or pruner ever selects on the test items (they stay the report)."""
    return "val/" + metric[len("test/"):] if metric.startswith("test/") else metric
