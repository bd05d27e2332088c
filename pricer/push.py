"""Checkpoints that are never lost: pushed in order, retried, deleted only once pushed.

The Trainer's own hub push deletes old checkpoints by `save_total_limit` whether or
not their upload succeeded, and a failed upload can end the run. Here one worker
thread pushes each saved checkpoint in turn (pushes of a run never overlap or skip
one), retries with backoff, records what reached the Hub in `pushed.json`, and only
then rotates old checkpoints away. Whatever could not be pushed stays on disk for

    python -m pricer.push RUN_DIR
"""

import argparse
import json
import logging
import queue
import shutil
import sys
import threading
from pathlib import Path

from pricer.resume import checkpoint_step, complete_checkpoints, read_run
from pricer.retry import with_retries

log = logging.getLogger("pricer")
PUSHED_FILE = "pushed.json"
CHECKPOINT_FILES = ["adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "tokenizer*"]


class PushFailed(RuntimeError):
    """A push that failed for good: the run's files stay on disk, and `python -m pricer.push RUN_DIR` finishes it."""


def pushed_steps(run_dir: Path) -> set[int]:
    path = run_dir / PUSHED_FILE
    return set(json.loads(path.read_text())) if path.exists() else set()


def mark_pushed(run_dir: Path, step: int) -> None:
    path = run_dir / PUSHED_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(pushed_steps(run_dir) | {step})))
    tmp.replace(path)


def push_checkpoint(repo_id: str, checkpoint: Path, private: bool, final_landed: bool = False) -> None:
    """The checkpoint's adapter at the repo root, like the Trainer's every_save strategy; once the
    final adapter has landed, under checkpoint-N/ instead, so the root keeps the final files."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=checkpoint,
        allow_patterns=CHECKPOINT_FILES,
        path_in_repo=checkpoint.name if final_landed else None,
        commit_message=f"Training in progress, step {checkpoint_step(checkpoint)}"
                       + (" (late, after the final adapter)" if final_landed else ""),
    )


def rotate(checkpoints_dir: Path, keep: int | None, pushed: set[int], pushing: bool) -> None:
    """Delete the oldest checkpoints beyond `keep`, never one still waiting for its push."""
    if not keep:
        return
    checkpoints = complete_checkpoints(checkpoints_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        if not pushing or checkpoint_step(old) in pushed:
            shutil.rmtree(old, ignore_errors=True)


class CheckpointPusher:
    """Pushes each saved checkpoint on a background thread, then rotates the old ones. The Trainer gets
    it as pricer.fit.CheckpointKeeper (with TrainerCallback's other hooks): `python -m pricer.push`
    never trains, and starts in well under a second instead of importing transformers first."""

    def __init__(self, run_dir: Path, repo_id: str | None, private: bool, keep: int | None,
                 attempts: int, wait_s: float) -> None:
        self.run_dir, self.repo_id, self.private, self.keep = run_dir, repo_id, private, keep
        self.attempts, self.wait_s = attempts, wait_s
        self.todo: queue.Queue[Path | None] = queue.Queue()
        for checkpoint in self._left_unpushed():  # an earlier attempt's: first, in order, then this run's saves
            self.todo.put(checkpoint)
        self.worker = threading.Thread(target=self._work, name="pricer-push", daemon=True)
        self.worker.start()

    def _left_unpushed(self) -> list[Path]:
        """Complete checkpoints an earlier attempt of this run saved but did not push (the Hub was down, or the
        process died first). Nothing else queues them again, and rotation keeps an unpushed checkpoint forever."""
        from pricer.distributed import is_main

        if not self.repo_id or not is_main():
            return []
        done = pushed_steps(self.run_dir)
        left = [c for c in complete_checkpoints(self.run_dir / "checkpoints") if checkpoint_step(c) not in done]
        if left:
            log.info("pushing %s, saved by an earlier attempt but not pushed", ", ".join(c.name for c in left))
        return left

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.todo.put(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def close(self) -> None:
        """Wait for queued pushes (called when training ends, however it ends)."""
        self.todo.put(None)
        self.worker.join()

    def _work(self) -> None:
        while (checkpoint := self.todo.get()) is not None:
            if self.repo_id and with_retries(
                lambda: push_checkpoint(self.repo_id, checkpoint, self.private),
                checkpoint.name, self.attempts, self.wait_s,
            ):
                mark_pushed(self.run_dir, checkpoint_step(checkpoint))
            rotate(checkpoint.parent, self.keep, pushed_steps(self.run_dir), pushing=self.repo_id is not None)


def push_pending(run_dir: Path, attempts: int, wait_s: float) -> list[str]:
    """Push every checkpoint and the final adapter that have not reached the Hub yet."""
    from pricer.hub import push_final

    meta = read_run(run_dir)
    repo_id, private = meta.get("repo_id"), meta.get("private", True)
    if not repo_id:
        raise SystemExit(f"error: {run_dir} was run with hub.push=false: nothing to push")
    done, failed = [], []
    late = bool(meta.get("final_pushed"))  # the repo's root holds the final adapter: keep it there
    for checkpoint in complete_checkpoints(run_dir / "checkpoints"):
        step = checkpoint_step(checkpoint)
        if step in pushed_steps(run_dir):
            continue
        if with_retries(lambda c=checkpoint: push_checkpoint(repo_id, c, private, late), checkpoint.name, attempts, wait_s):
            mark_pushed(run_dir, step)
            done.append(checkpoint.name)
        else:
            failed.append(checkpoint.name)
    adapter = run_dir / "adapter"
    if (adapter / "adapter_model.safetensors").exists() and not meta.get("final_pushed"):
        if with_retries(lambda: push_final(repo_id, adapter, private), "final adapter", attempts, wait_s):
            from pricer.resume import write_run

            write_run(run_dir, final_pushed=True)
            done.append("adapter")
        else:
            failed.append("adapter")
    if failed:
        raise SystemExit(f"error: could not push {', '.join(failed)} to {repo_id}: they stay in {run_dir}, try again")
    record_finished(run_dir)
    return done


def record_finished(run_dir: Path) -> None:
    """A run whose final push this command completed is finished: its run.json said `running` (the process
    died mid-push) or `failed` (the push failed for good), and resume=auto would score and push it again.
    Only a run that scored and wrote its card (adapter/metrics.json, README.md); a run that a live process
    still owns is left to it (write_run refuses to write over its owner)."""
    from pricer.resume import write_run

    meta = read_run(run_dir)
    if not meta.get("final_pushed") or meta.get("status") in ("finished", "pruned"):
        return
    if not all((run_dir / "adapter" / name).is_file() for name in ("metrics.json", "README.md")):
        return  # it never got to publish: resuming it scores and publishes
    try:
        write_run(run_dir, status="finished")
    except ValueError as err:  # owned by a live process, which records its own status when it ends
        log.info("%s: not recorded as finished: %s", run_dir, err)
        return
    log.info("%s: recorded as finished (was %s)", run_dir, meta.get("status"))


def _bad_args(run_dir: Path, attempts: int | None, wait_s: float | None) -> str | None:
    """What is wrong with the command line, in one line, before any Hub call; None if nothing."""
    from pricer.resume import RUN_FILE

    if not run_dir.is_dir():
        return f"{run_dir}: no such run dir: pass a run's folder, e.g. outputs/runs/2024-09-13_13.04.39"
    if not (run_dir / RUN_FILE).is_file():
        return f"{run_dir} is not a pricer run dir (no {RUN_FILE}): pass a run's folder, e.g. outputs/runs/2024-09-13_13.04.39"
    try:
        meta = read_run(run_dir)
    except (OSError, ValueError) as err:
        return (f"{run_dir / RUN_FILE} is not valid JSON ({type(err).__name__}: {str(err).splitlines()[0][:120]}): restore it "
                "(it names the run's Hub repo) or push its adapter/ folder with `hf upload`")
    if not isinstance(meta, dict):
        return f"{run_dir / RUN_FILE} holds {type(meta).__name__}, not the run's record: restore it"
    if attempts is not None and attempts < 1:
        return f"--attempts {attempts} must be at least 1 (1 = no retry): e.g. --attempts 5"
    if wait_s is not None and not wait_s >= 0:  # NaN too
        return f"--wait-s {wait_s:g} must be >= 0 (seconds before the first retry, doubled after each): e.g. --wait-s 2"
    return None


def run_setting(run_dir: Path, key: str, flag: str) -> object:
    """hub.KEY as the run was composed (its .hydra/config.yaml): the flags' default lives in
    conf/train.yaml and nowhere else, and a run that set its own keeps it here too."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    value = OmegaConf.select(OmegaConf.load(path), f"hub.{key}") if path.is_file() else None
    if value is None:
        raise SystemExit(f"error: {path} has no hub.{key}: pass {flag}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description="Push what a run has not pushed yet (e.g. after a network outage).")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--attempts", type=int, help="attempts per push (default: the run's hub.push_attempts)")
    parser.add_argument("--wait-s", type=float, help="seconds before the first retry (default: the run's hub.push_wait_s)")
    args = parser.parse_args()
    problem = _bad_args(args.run_dir, args.attempts, args.wait_s)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    attempts = args.attempts if args.attempts is not None else int(run_setting(args.run_dir, "push_attempts", "--attempts N"))
    wait_s = args.wait_s if args.wait_s is not None else float(run_setting(args.run_dir, "push_wait_s", "--wait-s S"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pushed = push_pending(args.run_dir, attempts, wait_s)
    print(f"pushed {', '.join(pushed) or 'nothing: all up to date'} -> {read_run(args.run_dir)['repo_id']}")


if __name__ == "__main__":
    main()
