"""Find a run to continue and its last complete checkpoint.

A run dir holds `run.json` (its name, Hub repo, W&B id, status and the overrides
that made it), written at start and updated at the end. `resume=RUN_DIR` continues
that run; `resume=auto` continues the newest unfinished run started with the same
overrides, which is what a requeued SLURM job or a restarted Colab cell needs.
The Trainer writes `trainer_state.json` last, so a checkpoint without a readable
one was cut short by a crash and is never resumed from.
"""

import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
ENDED = ("finished", "pruned")  # a run in these states is never continued
NOT_AUTO = (*ENDED, "failed")  # resume=auto leaves a failed run alone (it would fail again); resume=DIR retries it
log = logging.getLogger("pricer")


class ResumeError(ValueError):
    """`resume=` names nothing that can be continued."""


def read_run(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RUN_FILE).read_text())


def write_run(run_dir: Path, **fields: Any) -> None:
    """Update run.json atomically: a crash mid-write keeps the previous version."""
    path = run_dir / RUN_FILE
    current = json.loads(path.read_text()) if path.exists() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current | fields, indent=2))
    tmp.replace(path)


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


def find_resumable(resume: str, runs_root: Path, overrides: list[str]) -> Path | None:
    """The run dir to continue: the named one, or for `auto` the newest unfinished twin."""
    if resume != "auto":
        run_dir = Path(resume)
        if not (run_dir / RUN_FILE).exists():
            raise ResumeError(f"resume={resume} is not a pricer run dir (no {RUN_FILE}): pass a dir under outputs/runs")
        if read_run(run_dir).get("status") in ENDED:
            raise ResumeError(f"resume={resume} already {read_run(run_dir)['status']}: start a new run without resume=")
        return run_dir
    wanted = sorted(o for o in overrides if not o.startswith("resume="))
    candidates = []
    for run_file in runs_root.glob(f"**/{RUN_FILE}"):
        try:
            meta = json.loads(run_file.read_text())
        except (OSError, ValueError):
            log.warning("resume=auto: skipping %s, which is not readable JSON", run_file)
            continue
        if meta.get("status") in NOT_AUTO or sorted(meta.get("overrides", [])) != wanted:
            continue
        if meta.get("status") == "running" and is_alive(meta):
            log.info("resume=auto: skipping %s, still running (pid %s)", run_file.parent, meta.get("pid"))
            continue
        candidates.append((meta.get("started", ""), run_file.parent))
    return max(candidates)[1] if candidates else None


def owner() -> dict[str, Any]:
    """Who runs a run now: written into run.json at start and at each resume."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def is_alive(meta: dict[str, Any]) -> bool:
    """The run's process still runs on this host. A run of another host cannot be checked from here and
    counts as not alive: a requeued SLURM job, the case resume=auto is for, restarts on another node."""
    if meta.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(meta.get("pid", -1)), 0)
    except (OSError, ValueError, OverflowError):
        return False
    return True
