"""Run names from the start time, as the notebook named them, unique even within one second.

Hydra starts the jobs of a multirun back to back, and sweep workers start in
parallel: two runs can share a timestamp. A name is claimed by creating a marker
file with O_EXCL, which the filesystem grants to exactly one process; the loser
takes the next suffix. Names stay valid Hub repo ids.
"""

import os
import re
import sys
from datetime import datetime
from pathlib import Path

RUN_NAME_FORMAT = "%Y-%m-%d_%H.%M.%S"  # the notebook's: 2024-09-13_13.04.39
# Hub repo names: letters, digits, '-', '_', '.'; no '--' or '..'; not starting or ending with '-' or '.'; <= 96.
_REPO_NAME = re.compile(r"^(?![.-])(?!.*(--|\.\.))[A-Za-z0-9._-]{1,96}(?<![.-])$")


def run_start(output_dir: Path) -> datetime:
    """When this run's dir was stamped (so the dir and the run share a name), else now."""
    try:
        return datetime.strptime(re.sub(r"_\d+$", "", output_dir.name), RUN_NAME_FORMAT)
    except ValueError:
        return datetime.now()


_claimed: dict[str, Path] = {}  # output_root -> the run dir this process claimed


def claim_run_dir(output_root: str, start: datetime | None = None) -> str:
    """`hydra.run.dir`'s resolver: `{output_root}/runs/{run name}`, created by this process alone.

    Hydra's `${now:...}` gives two runs started in the same second one dir, and each writes its
    config and log over the other's. Here the name is claimed first (O_EXCL), then the dir is made
    with mkdir, which also fails if it exists: the run dir is the claim. Hydra may resolve the key
    more than once per process, so the claim is made once and remembered.

    Under torchrun all ranks are one run: rank 0 claims, the others receive its dir and keep
    their own Hydra files and log in `{run dir}/rank{n}`, so no rank > 0 claims a name or a dir.
    """
    if output_root not in _claimed:
        from pricer import distributed

        run_dir = distributed.on_main(lambda: _make_run_dir(output_root, start or datetime.now()))
        _claimed[output_root] = run_dir if distributed.is_main() else run_dir / f"rank{distributed.rank()}"
    return str(_claimed[output_root])


def rank_subdir() -> str:
    """`hydra.sweep.subdir`'s suffix in a SLURM job of several tasks: '' for rank 0, '/rank{n}' for the others,
    so each task keeps its Hydra files and log in a dir of its own (`{job}/rank{n}`, as a run's other ranks
    do under torchrun) instead of writing into rank 0's train.log."""
    from pricer import distributed

    return f"/rank{distributed.rank()}" if not distributed.is_main() else ""


def _make_run_dir(output_root: str, start: datetime) -> Path:
    try:
        while True:
            name = claim_run_name(start, Path(output_root) / ".run_names")
            run_dir = Path(output_root) / "runs" / name
            try:
                run_dir.mkdir(parents=True)
                return run_dir
            except FileExistsError:
                continue  # a dir left without its marker (the registry was cleaned): take the next name
    except OSError as err:
        # Hydra resolves hydra.run.dir before pricer's own checks run, and would wrap any exception in
        # a traceback of its own: this is the one place to say it in a line.
        print(f"error: output_root={output_root} cannot hold runs ({type(err).__name__}: {err.strerror}): "
              "pass output_root=A_WRITABLE_FOLDER", file=sys.stderr)
        raise SystemExit(2) from None


def claimed_name(run_dir: Path) -> str | None:
    """The run name if `run_dir` is the dir this process claimed, else None (e.g. hydra.run.dir given)."""
    mine = [d for d in _claimed.values() if d.resolve() == run_dir.resolve()]
    return mine[0].name if mine else None


def release_unclaimed(run_dir: Path) -> None:
    """Give back the name of a run dir this process claimed and then removed unused (bad input, or a signal
    before the run was claimed): its `.run_names` marker would hold the name forever, for no run."""
    for root, mine in list(_claimed.items()):
        if mine.resolve() == run_dir.resolve() and not mine.exists():
            (Path(root) / ".run_names" / mine.name).unlink(missing_ok=True)
            del _claimed[root]


def timestamp_name(start: datetime) -> str:
    return start.strftime(RUN_NAME_FORMAT)


def claim_run_name(start: datetime, registry: Path) -> str:
    """The timestamp name, or `{timestamp}_{n}` when another run already holds it."""
    registry.mkdir(parents=True, exist_ok=True)
    base = timestamp_name(start)
    for n in range(1000):
        name = base if n == 0 else f"{base}_{n}"
        try:
            os.close(os.open(registry / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return name
        except FileExistsError:
            continue
    raise RuntimeError(f"more than 1000 runs started at {base}")


def project_run_name(project: str, run_name: str) -> str:
    return f"{project}-{run_name}"


def hub_repo_id(hf_user: str, project: str, run_name: str) -> str:
    repo_name = project_run_name(project, run_name)
    if not is_valid_repo_name(repo_name):
        raise ValueError(f"project={project} makes an invalid Hub repo name {repo_name!r}: use letters, digits, '-', '_'")
    return f"{hf_user}/{repo_name}"


def is_valid_repo_name(name: str) -> bool:
    return bool(_REPO_NAME.match(name))


def tracker_run_id() -> str:
    """A W&B run id, kept in run.json so a resumed run logs into the same W&B run."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
