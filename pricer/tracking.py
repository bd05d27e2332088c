"""Weights & Biases: one run per job, always finished, never holding a secret.

pricer starts the W&B run itself (rather than leaving it to the Trainer's callback)
to choose its name, group and config; the callback then logs into that run. The
run is finished in `finish`, whatever happened, so the next job of a multirun
starts a fresh run instead of appending to this one. Under torchrun only rank 0 tracks:
the others get `report_to=[]` and every call here does nothing on them.
"""

from typing import Any

from pricer.distributed import is_main


def start(
    backend: str,
    project: str,
    name: str,
    group: str | None,
    config: dict[str, Any],
    run_dir: str,
    run_id: str,
    entity: str | None = None,
    tags: list[str] | None = None,
) -> list[str]:
    """Start tracking; returns the Trainer's `report_to`."""
    if backend == "none" or not is_main():
        return []
    import wandb

    wandb.init(
        project=project,
        entity=entity,
        name=name,
        group=group,
        tags=tags or [],
        config=config,
        dir=run_dir,
        id=run_id,
        resume="allow",  # a resumed pricer run continues its W&B run
        reinit="finish_previous",
    )
    return ["wandb"]


def log_summary(backend: str, metrics: dict[str, float], images: list) -> None:
    """Final metrics into the run's summary (the columns W&B compares runs by), charts as images."""
    if backend == "none" or not is_main():
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(metrics)
        wandb.log({f"charts/{path.stem}": wandb.Image(str(path)) for path in images if path.exists()})


def finish(backend: str, status: str) -> None:
    """`status` is the run's: finished, interrupted (resumable) or failed."""
    if backend == "none" or not is_main():
        return
    import wandb

    if wandb.run is not None:
        if status == "interrupted":
            wandb.mark_preempting()
        wandb.finish(exit_code=0 if status == "finished" else 1)
