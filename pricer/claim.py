"""Claim a run: its name, dir, Hub repo and W&B run id, decided once, in one place.

A new run's dir was already claimed atomically when Hydra resolved `hydra.run.dir`
(run_names.claim_run_dir: O_EXCL on the name, then mkdir); here the other names follow
from it and are written to run.json before anything trains. `resume=` claims the
names of the run it continues instead, so a resumed run keeps its dir, Hub repo and
W&B run. Every later step reads the names from the returned Claim, never derives them.
Under torchrun rank 0 claims and writes run.json; the other ranks receive its Claim.
A claim is also the run's lock (pricer.run_lock): from the claim to the end of its job the
claiming process is the run's one writer, and a second `resume=` of it is refused.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pricer import distributed, run_lock, run_names
from pricer.resume import ResumeError, check_continuable, check_same_adapter_shape, owner, read_run, take_resumable, write_run
from pricer.schema import Hub

log = logging.getLogger("pricer")


@dataclass(frozen=True)
class Claim:
    run_dir: Path
    run_name: str  # the start time, 2024-09-13_13.04.39
    project_run_name: str  # pricer-2024-09-13_13.04.39: the W&B run's name and the Hub repo's
    repo_id: str | None  # None: hub.push=false
    wandb_id: str
    group: str | None  # a sweep's W&B group
    resumed: int  # how many times this run was resumed


def claim_run(run_dir: Path, project: str, output_root: str, resume: str | None, overrides: list[str], hub: Hub,
              group: str | None, lora: dict[str, Any], force: bool = False) -> Claim:
    """This run's names, or, with `resume=`, the names of the run it continues.

    `run_dir` is the dir Hydra made for this process; `overrides` are the command line's
    (resume=auto finds an unfinished run started with the same ones). On several ranks rank 0
    claims (or finds the run to resume) and every rank gets its Claim. `force`: resume_force (resume.check_continuable)."""
    return distributed.on_main(lambda: _claim(run_dir, project, output_root, resume, overrides, hub, group, lora, force))


def _claim(run_dir: Path, project: str, output_root: str, resume: str | None, overrides: list[str], hub: Hub,
           group: str | None, lora: dict[str, Any], force: bool) -> Claim:
    overrides = sorted(o for o in overrides if not o.startswith("resume="))
    previous = take_resumable(resume, Path(output_root), overrides) if resume else None  # locked for this process
    if previous is not None:
        try:
            check_same_adapter_shape(previous, lora)
            check_continuable(previous, distributed.world_size(), force)
        except ResumeError:
            run_lock.release(previous)
            raise
        log.info("resuming %s (this attempt's own log: %s)", previous, run_dir)
        write_run(previous, status="running", resumed=read_run(previous).get("resumed", 0) + 1,
                  world_size=distributed.world_size(), **owner())
        return _from_run_file(previous)
    start = run_names.run_start(run_dir)
    run_name = run_names.claimed_name(run_dir) or run_names.claim_run_name(start, Path(output_root) / ".run_names")
    repo_id = None
    if hub.push:  # the token is checked now: a refused one ends the run before training, not at its first push
        from pricer.hub import checked_account

        repo_id = run_names.hub_repo_id(checked_account(hub.hf_user, hub.push_attempts, hub.push_wait_s), project, run_name)
    if not run_lock.acquire(run_dir):  # a dir this process just made: only hydra.run.dir=SOMEONE_ELSES gets here
        raise ResumeError(f"{run_dir} is owned by {run_lock.owner_of(run_dir)}: pass another hydra.run.dir")
    write_run(run_dir, run_name=run_name, project_run_name=run_names.project_run_name(project, run_name), repo_id=repo_id,
              private=hub.private, group=group, wandb_id=run_names.tracker_run_id(), overrides=overrides, started=start.isoformat(),
              status="running", world_size=distributed.world_size(), **owner())
    return _from_run_file(run_dir)


def _from_run_file(run_dir: Path) -> Claim:
    meta = read_run(run_dir)
    return Claim(run_dir, meta["run_name"], meta["project_run_name"], meta["repo_id"], meta["wandb_id"],
                 meta.get("group"), meta.get("resumed", 0))


@contextmanager
def recording_status(run_dir: Path, finish: Callable[[str], None]) -> Iterator[None]:
    """run.json's status after the block: finished, interrupted (a signal: resumable), pruned (a sweep
    stopped it) or failed (anything else, so resume=auto leaves it alone). `finish(status)` closes the
    tracker whatever happened, so the next job of a multirun starts its own W&B run. Rank 0 alone
    writes the status: all ranks end the same way (pricer.distributed.on_main, agreed_signal)."""
    from pricer.interrupt import interruption_in

    status, agreed = "failed", False
    try:
        yield
        status = "finished"
    except BaseException as err:
        status = _status_of(err)
        agreed = getattr(interruption_in(err), "agreed", False)
        full = disk_full(err, run_dir)
        if full:
            raise DiskFull(full) from None  # one line, not the library's traceback
        raise
    finally:
        if distributed.is_main():
            try:
                write_run(run_dir, status=status)
            finally:
                run_lock.release(run_dir)  # the next job of a --multirun, or a resume, may take it
        if agreed:  # every rank stops on this signal: none exits (and has the launcher stop the
            distributed.barrier()  # others) before rank 0 has recorded it; one rank alone meets no one
        finish(status)


class DiskFull(OSError):
    """The run's disk filled up: the run failed, its last complete checkpoint is intact."""


def disk_full(err: BaseException, run_dir: Path) -> str | None:
    """The one line for an error that a full disk caused, else None.

    torch.save reports it as a RuntimeError ("file write failed"), safetensors as its own error,
    Python as OSError ENOSPC: any of them in the chain, with the disk really (nearly) full, is one."""
    import errno
    import shutil

    seen, depth, says_full = err, 0, False
    while seen is not None and depth < 20 and not says_full:
        says_full = (getattr(seen, "errno", None) == errno.ENOSPC or "No space left" in str(seen)
                     or "file write failed" in str(seen))
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    try:
        usage = shutil.disk_usage(run_dir)
    except OSError:
        return None
    if not says_full or usage.free > 64 * 2**20:
        return None
    return (f"no space left on the disk of {run_dir} ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB): "
            f"its last complete checkpoint is kept; free space, then `python -m pricer.train resume={run_dir}`")


def _status_of(err: BaseException) -> str:
    from pricer.interrupt import interruption_in

    if interruption_in(err) is not None:
        return "interrupted"
    try:
        from optuna import TrialPruned
    except ImportError:
        return "failed"
    return "pruned" if isinstance(err, TrialPruned) else "failed"


def drop_unclaimed_dir(output_dir: Path) -> None:
    """Bad input leaves no run dir behind: remove what Hydra wrote there (.hydra/, train.log) unless a
    run was claimed in it (run.json); anything else in the dir stays."""
    if (output_dir / "run.json").exists():
        return
    import shutil

    ranks = sorted(output_dir.glob("rank[0-9]*")) if distributed.is_main() else []  # several ranks: theirs too,
    for folder in [*ranks, output_dir]:  # whichever rank gets here first (each also drops its own)
        shutil.rmtree(folder / ".hydra", ignore_errors=True)
        (folder / "train.log").unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: the user's own files
