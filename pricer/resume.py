"""Find a run to continue and its last complete checkpoint.

A run dir holds `run.json` (its name, Hub repo, W&B id, status and the overrides
that made it), written at start and updated at the end. `resume=RUN_DIR` continues
that run; `resume=auto` continues the newest unfinished run started with the same
overrides, which is what a requeued SLURM job or a restarted Colab cell needs.
The Trainer writes `trainer_state.json` last, so a checkpoint without a readable
one was cut short by a crash and is never resumed from.
"""

import errno
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from pricer import run_lock

RUN_FILE = "run.json"
ENDED = ("finished", "pruned")  # a run in these states is never continued
NOT_AUTO = (*ENDED, "failed")  # resume=auto leaves a failed run alone (it would fail again); resume=DIR retries it
log = logging.getLogger("pricer")


class ResumeError(ValueError):
    """`resume=` names nothing that can be continued."""


def read_run(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RUN_FILE).read_text())


def write_run(run_dir: Path, **fields: Any) -> None:
    """Update run.json atomically: a crash mid-write keeps the previous version. Only the run's owner
    writes (pricer.run_lock): a run another live process trains is refused."""
    run_lock.check_writer(run_dir)
    path = run_dir / RUN_FILE
    current = json.loads(path.read_text()) if path.exists() else {}
    text, tmp = json.dumps(current | fields, indent=2), path.with_suffix(".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:  # no half-written temp left beside it
        tmp.unlink(missing_ok=True)
        if err.errno != errno.ENOSPC or not path.exists():
            raise
        _write_in_place(path, text)  # a full disk: no room for a new file, but the old one's blocks hold the new text


def _write_in_place(path: Path, text: str) -> None:
    """run.json overwritten where it lies: a status change (a few bytes) fits the block the file already has."""
    with open(path, "r+") as f:
        f.write(text)
        f.truncate()


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoints whose trainer_state.json parses and whose adapter file is whole, oldest first."""
    return sorted((p for p in checkpoints_dir.glob("checkpoint-*") if _is_complete(p)), key=checkpoint_step)


def _is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last, but a full disk or a copy cut short can still leave a
    truncated adapter beside it: safetensors checks that its header's tensors cover the file."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    adapter = checkpoint / "adapter_model.safetensors"
    if not adapter.exists():
        return True  # a full fine-tune's checkpoint (quant=none without LoRA) has other files
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(adapter), "pt") as weights:
            weights.keys()
    except (OSError, SafetensorError):
        return False
    return True


def check_same_adapter_shape(run_dir: Path, lora: dict[str, Any]) -> None:
    """Resuming with another LoRA shape would fail deep in the checkpoint load: say so first."""
    checkpoints = complete_checkpoints(run_dir / "checkpoints") if (run_dir / "checkpoints").exists() else []
    saved_file = checkpoints[-1] / "adapter_config.json" if checkpoints else run_dir / "adapter" / "adapter_config.json"
    if not saved_file.exists():
        return
    saved = json.loads(saved_file.read_text())
    for key in ("r", "lora_alpha", "target_modules"):
        was, now = saved.get(key), lora.get(key)
        if key == "target_modules" and isinstance(was, list) and isinstance(now, list):
            was, now = sorted(was), sorted(now)
        if key == "target_modules" and not isinstance(now, list):
            continue  # "all-linear" was expanded into names when saved
        if was is not None and was != now:
            raise ResumeError(f"resume={run_dir} trained with lora.{key}={was}, not {now}: resume with lora.{key}={was} "
                              "(or start a new run without resume=)")


def drop_incomplete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Remove what a crash mid-save left, so the step is saved again cleanly."""
    complete = set(complete_checkpoints(checkpoints_dir))
    dropped = [p for p in checkpoints_dir.glob("checkpoint-*") if p not in complete]
    for path in dropped:
        shutil.rmtree(path)
    return dropped


def take_resumable(resume: str, runs_root: Path, overrides: list[str]) -> Path | None:
    """The run dir to continue, its lock taken for this process (pricer.run_lock): the named one, or
    for `auto` the newest unfinished twin that no live process owns. The lock makes the choice
    atomic: two requeued jobs started together never take one run; the one that loses the race
    takes the next unowned twin, or none."""
    if resume != "auto":
        run_dir = Path(resume)
        meta = _checked_run_file(run_dir, f"resume={resume}")
        if meta.get("status") in ENDED:
            raise ResumeError(f"resume={resume} already {meta['status']}: start a new run without resume=")
        if not run_lock.acquire(run_dir):
            raise ResumeError(f"resume={resume} is being trained by {run_lock.owner_of(run_dir)}: "
                              "one process at a time; wait for it to end, or stop it and resume again")
        return run_dir
    wanted = sorted(o for o in overrides if not o.startswith("resume="))
    candidates = []
    for run_file in runs_root.glob(f"**/{RUN_FILE}"):
        try:
            meta = json.loads(run_file.read_text())
        except (OSError, ValueError):
            log.warning("resume=auto: skipping %s, which is not readable JSON", run_file)
            continue
        if meta.get("status") not in NOT_AUTO and sorted(meta.get("overrides", [])) == wanted:
            candidates.append((meta.get("started", ""), run_file.parent))
    for _, run_dir in sorted(candidates, reverse=True):
        if not run_lock.acquire(run_dir):
            log.info("resume=auto: skipping %s, owned by %s", run_dir, run_lock.owner_of(run_dir))
            continue
        try:  # read again under the lock: the owner that just let go may have finished it
            meta = _checked_run_file(run_dir, "resume=auto")
        except ResumeError as err:
            log.warning("resume=auto: skipping %s: %s", run_dir, err)
            meta = {"status": "failed"}
        if meta.get("status") not in NOT_AUTO:
            log.info("resume=auto: continuing %s", run_dir)
            return run_dir
        run_lock.release(run_dir)
    log.info("resume=auto: no unfinished run with these overrides is free (%d owned or ended): starting a new run",
             len(candidates))
    return None


def check_continuable(run_dir: Path, world_size: int, force: bool) -> None:
    """A resume that cannot continue the run as it was is refused in one line, before the model loads,
    unless `resume_force=true`: then it says what changes. Two cases: its checkpoints are gone (it
    would train again from step 0), or another number of ranks (the global batch, per device x
    accumulation x ranks, and the data order change mid-run)."""
    meta = read_run(run_dir)
    checkpoints = run_dir / "checkpoints"
    saved, trained = meta.get("last_checkpoint"), meta.get("trained")
    if saved and not trained and not (checkpoints.exists() and complete_checkpoints(checkpoints)):
        _refuse_unless(force, f"resume={run_dir} saved checkpoint-{saved}, but {checkpoints} holds no complete checkpoint "
                              "(removed or lost), so it would train again from step 0",
                       "restore the checkpoints, or pass resume_force=true to train it again from step 0 in this run")
    was = meta.get("world_size", 1)
    if was != world_size:
        _refuse_unless(force, f"resume={run_dir} trained on {was} rank(s), this launch has {world_size}: the global batch "
                              f"(per device x accumulation x ranks) would change by {world_size}/{was} mid-run",
                       f"resume it on {was} rank(s), or pass resume_force=true to go on at the new batch")


def _refuse_unless(force: bool, problem: str, fix: str) -> None:
    if not force:
        raise ResumeError(f"{problem}: {fix}")
    log.warning("%s; resume_force=true: going on", problem)


REQUIRED = ("run_name", "project_run_name", "repo_id", "wandb_id", "status")  # what a resume reads from run.json


def _checked_run_file(run_dir: Path, key: str) -> dict[str, Any]:
    """run.json, refused in one line (before anything is written) if it cannot be continued from."""
    if not (run_dir / RUN_FILE).is_file():
        raise ResumeError(f"{key} is not a pricer run dir (no {RUN_FILE}): pass a dir under outputs/runs")
    try:
        meta = read_run(run_dir)
    except (OSError, ValueError) as err:
        raise ResumeError(f"{key}: {run_dir / RUN_FILE} is not readable JSON ({err}): start a new run without resume=") from None
    missing = [field for field in REQUIRED if not isinstance(meta, dict) or field not in meta]
    if missing:
        raise ResumeError(f"{key}: {run_dir / RUN_FILE} lacks {', '.join(missing)}, so the run's names are lost: "
                          "start a new run without resume=")
    return meta


def owner() -> dict[str, Any]:
    """Who runs a run now: written into run.json at start and at each resume."""
    return {"pid": os.getpid(), "host": socket.gethostname()}
