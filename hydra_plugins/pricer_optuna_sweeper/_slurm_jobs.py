"""Waiting on a trial's SLURM job by what SLURM itself says.

submitit learns that a job ended from `sacct` (slurmdbd's record). While slurmctld requeues a job
(submitit's own requeue after a time limit or preemption, `scontrol requeue`), that record can say
FAILED for a moment; submitit then reports the job as ended without output, although SLURM runs it
again. Seen in a loaded test run: the trial failed, and its requeued job was then refused since
its trial had ended. `squeue` asks slurmctld, which holds the job until it truly leaves the queue.
"""

import logging
import subprocess
import time
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)

# squeue's states of a job that will still run or is running; COMPLETING may turn into a requeue
QUEUED = {"PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESIZING"}


def adopted_job_result(trial: Any) -> JobReturn | None:
    """The result of the SLURM job a sweep run again took over (_study.adopt_orphaned_job), once it ends;
    None for any other trial. submitit reads it from the job's folder, as it would have for the dead sweep."""
    from pricer.trial import SLURM_JOB

    from . import _study

    job = trial.user_attrs.get(SLURM_JOB)
    if job is None or trial.user_attrs.get(_study.ADOPTED) != job["id"]:
        return None
    return wait_while_requeued(trial, _job_result(job))


def wait_while_requeued(trial: Any, ret: JobReturn) -> JobReturn:
    """`ret`, unless submitit said the trial's job ended without a result while SLURM still has it queued
    (requeued): then the job's result once it has really ended."""
    from pricer.trial import SLURM_JOB

    from ._study import _is_slurm_end

    while ret.status == JobStatus.FAILED and _is_slurm_end(ret._return_value):
        job = trial.user_attrs.get(SLURM_JOB)
        if not job or not still_queued(job["id"]):
            return ret
        log.info("trial %d: SLURM job %s is queued again (requeued): waiting for it", trial.number, job["id"])
        ret = _job_result(job)
    return ret


def still_queued(job_id: str, settle_s: float = 60.0) -> bool:
    """Whether slurmctld still holds the job to run; a job COMPLETING is asked again until it settles."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            state = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                                   timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return False
        if state != "COMPLETING" or time.monotonic() > deadline:
            return state in QUEUED
        time.sleep(2)


def _job_result(job: dict) -> JobReturn:
    import submitit

    try:
        return submitit.SlurmJob(folder=job["folder"], job_id=job["id"]).results()[0]
    except Exception as err:  # noqa: BLE001 - submitit's "no output" and the job's own failure alike: the trial's outcome
        return JobReturn(status=JobStatus.FAILED, _return_value=err)
