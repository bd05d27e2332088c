"""Weights & Biases: one run per job, always finished, never holding a secret.

pricer starts the W&B run itself (rather than leaving it to the Trainer's callback)
to choose its name, group and config; the callback then logs into that run. The
run is finished in `finish`, whatever happened, so the next job of a multirun
starts a fresh run instead of appending to this one. Under torchrun only rank 0 tracks:
the others get `report_to=[]` and every call here does nothing on them.
"""

import contextlib
import hashlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pricer.distributed import is_main
from pricer.logs import masked_url

log = logging.getLogger(__name__)

# W&B refuses these in a project name (wandb.Settings.validate_project), after the model load
PROJECT_FORBIDDEN = "/\\#?%:"
PROJECT_MAX = 128
OFFLINE_NOTICE = "[INFO] Running in WANDB offline mode"
# W&B's job_type, the runs table's first filter: a single run, a sweep trial, a re-scoring, a sweep's summary
JOB_TYPES = ("train", "trial", "evaluate", "sweep")
TAG_MAX = 64  # W&B refuses a longer tag (wandb.Settings.validate_run_tags)
NOT_PRESETS = ("local",)  # conf/local/default.yaml: the user's own overrides, listed among the choices even when absent
_lost: set[str] = set()  # ids of the W&B runs whose service process went away in this process (service_lost)


def project_problem(project: Any) -> str | None:
    """Why W&B would refuse this project name, or None."""
    if not isinstance(project, str) or not project:
        return "is empty"
    found = "".join(sorted({ch for ch in project if ch in PROJECT_FORBIDDEN}))
    if found:
        return f"holds {found!r} (W&B project names cannot hold any of {PROJECT_FORBIDDEN})"
    return f"is longer than {PROJECT_MAX} characters" if len(project) > PROJECT_MAX else None


def preflight(backend: str, timeout_s: float = 10.0) -> str | None:
    """What keeps W&B from starting this run, checked before the model loads, or None.

    wandb.init finds out only after the load: without a key and a terminal to ask for one
    (UsageError), or with a server it cannot reach (CommError after 120 s). Here: the mode as
    W&B resolves it (WANDB_MODE, `wandb offline`), a key for its server (WANDB_API_KEY, ~/.netrc,
    `wandb login`), and one HTTP request to the server."""
    if backend != "wandb" or not is_main():
        return None
    import requests
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.wbauth import authenticate_session

    settings = wandb_setup.singleton().settings
    if settings.mode in ("offline", "dryrun", "disabled"):
        return None
    base_url = settings.base_url
    try:
        auth = authenticate_session(host=base_url, source="pricer", prompt=False, update_session=False)
    except AuthenticationError as err:
        return f"W&B's key for {base_url} is malformed ({err}): set WANDB_API_KEY, or pass tracking=none"
    if auth is None and not sys.stdin.isatty():
        return (f"tracking=wandb needs a W&B key for {base_url} and there is no terminal to ask for one: set WANDB_API_KEY "
                "(or run `wandb login`), or pass tracking=none, or set WANDB_MODE=offline")
    try:
        requests.get(base_url, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as err:
        return (f"tracking=wandb cannot reach the W&B server {base_url} ({type(err).__name__}): check the network or "
                "WANDB_BASE_URL, or set WANDB_MODE=offline (sync later with `wandb sync`), or pass tracking=none")
    return None


def import_trainer_integrations() -> None:
    """Import transformers' tracker integrations without their import-time print.

    transformers prints "[INFO] Running in WANDB offline mode" on stdout whenever WANDB_MODE=offline is
    set, when the Trainer is first imported, whatever tracker the run uses (tracking=none too). pricer
    says which tracker a run uses itself; every other line of that import is printed as it was."""
    if "transformers.integrations.integration_utils" in sys.modules:
        return
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import transformers.integrations.integration_utils  # noqa: F401
    sys.stdout.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                             if line.rstrip("\n") != OFFLINE_NOTICE))


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
    job_type: str = "train",
    storage: str | None = None,
    link: Callable[..., Any] | None = None,
) -> list[str]:
    """Start tracking; returns the Trainer's `report_to`.

    `job_type` (JOB_TYPES) and `tags` (preset_tags) are what the W&B runs table filters by. A sweep
    trial's run and its Optuna trial point at each other: the config's `trial` gets the study's `storage`
    URL (password masked) beside its number and study name, and `link` (pricer.trial.set_trial_attrs)
    records the W&B run's id, project and, online, its URL on the trial (pricer.compare prints them).
    Both are passed in: pricer.trial imports pricer.config, which imports this module."""
    if backend == "none" or not is_main():
        return []
    import wandb

    if os.environ.get("SLURM_JOB_ID"):
        # sbatch passes the submitting process's environment on; where that process runs W&B (a notebook's
        # kernel) it holds WANDB_SERVICE, its service's socket: on another node that socket does not exist, and
        # on this one the service is outside the job and outlives it. A job logs through a service of its own.
        os.environ.pop("WANDB_SERVICE", None)
    if config.get("trial"):
        config = config | {"trial": config["trial"] | {"storage": masked_url(storage or "")}}
    run = wandb.init(
        project=project,
        entity=entity,
        name=name,
        group=group,
        job_type=job_type,
        tags=tags or [],
        config=config | {"run_dir": run_dir},
        dir=run_dir,
        id=run_id,
        resume="allow",  # a resumed pricer run continues its W&B run
        reinit="finish_previous",
    )
    if link is not None:
        link(wandb_id=run.id, wandb_project=run.project, **({"wandb_url": run.url} if run.url else {}))
    return ["wandb"]


def preset_tags(choices: dict[str, Any], extra: list[str] | None = None) -> list[str]:
    """`hardware=t4`, `lora=r8`, ...: the config groups a run composed (Hydra's runtime choices), then the
    user's tracking.tags; Hydra's own groups left out. W&B filters and groups runs by tag."""
    tags = [f"{group}={choice}" for group, choice in choices.items()
            if choice is not None and not group.startswith("hydra/") and group not in NOT_PRESETS]
    return [str(tag)[:TAG_MAX] for tag in dict.fromkeys([*tags, *(extra or [])])]


def sweep_summary(backend: str, project: str, entity: str | None, group: str, sweep_dir: str, config: dict[str, Any],
                  summary: dict[str, Any], tags: list[str]) -> None:
    """A sweep's result where its trials' runs are: one small run of job_type `sweep` in the sweep's W&B group,
    its summary the best trial (number, value, run name, Hub repo, W&B run, run dir). Written by the sweep
    process when the sweep ends; the same sweep run again updates the same run (its id comes from the study).
    W&B failing here costs the summary run only: the sweep's results are in its dir already."""
    if backend == "none" or not is_main():
        return
    import wandb

    run_id = "sweep-" + hashlib.sha1(f"{config.get('storage')}|{config.get('study_name')}".encode()).hexdigest()[:16]
    try:
        run = wandb.init(project=project, entity=entity, name=f"{group}-summary", group=group, job_type="sweep",
                         tags=tags, config=config, dir=sweep_dir, id=run_id, resume="allow", reinit="finish_previous",
                         settings=wandb.Settings(x_disable_stats=True, console="off", save_code=False))
        run.summary.update(summary)
        run.finish()
    except Exception as err:  # noqa: BLE001 - W&B's errors have no common base; the sweep's results are saved
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        log.warning("the sweep's W&B summary run was not written (%s): its results are in %s", first, sweep_dir)


def log_summary(backend: str, metrics: dict[str, float], images: list) -> None:
    """Final metrics into the run's summary (the columns W&B compares runs by), charts as images."""
    if backend == "none" or not is_main():
        return
    import wandb

    if live_run() is not None:
        with unless_service_lost():
            wandb.run.summary.update(metrics)
            wandb.log({f"charts/{path.stem}": wandb.Image(str(path)) for path in images if path.exists()})


def finish(backend: str, status: str) -> None:
    """`status` is the run's: finished, interrupted (resumable) or failed."""
    if backend == "none" or not is_main():
        return
    import wandb

    if live_run() is not None:
        with unless_service_lost():
            if status == "interrupted":
                wandb.mark_preempting()
            wandb.finish(exit_code=0 if status == "finished" else 1)


def live_run():
    """This process's W&B run, or None: none started, or its service process went away (service_lost)."""
    import wandb

    return wandb.run if wandb.run is not None and wandb.run.id not in _lost else None


@contextlib.contextmanager
def unless_service_lost() -> Iterator[None]:
    """W&B calls whose ConnectionError (its service process gone: service_lost) does not fail the run."""
    try:
        yield
    except ConnectionError as err:
        service_lost(err)


def service_lost(err: ConnectionError) -> None:
    """W&B's service process went away: say so once, and drop the dead connection.

    A SLURM job's signal (preemption, its time limit, scancel) reaches every process of the job, W&B's
    service (wandb-core) too, and that Go program exits on SIGTERM whatever its parent blocks or ignores;
    every W&B call of the process then raises ConnectionError. The run goes on to its checkpoint and ends
    as the signal says: its numbers stay in train.log and the checkpoints' trainer_state.json, and a resumed
    run continues the same W&B run (its id is in run.json). Without the dead connection (wandb.teardown) a
    next wandb.init in this process (the next job of a multirun) starts a new service."""
    import wandb

    run_id = wandb.run.id if wandb.run is not None else ""
    if run_id not in _lost:
        _lost.add(run_id)
        log.warning("W&B's service process is gone (%s: %s; a SLURM job's signal ends it too): W&B run %s gets no more "
                    "from this attempt; train.log and the checkpoints keep its numbers, and a resumed run continues it",
                    type(err).__name__, err, run_id)
    with contextlib.suppress(ConnectionError):
        wandb.teardown()
