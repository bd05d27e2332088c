"""One run on several ranks: what `torchrun` / `accelerate launch` set up, and the few collectives pricer needs.

The launcher starts N copies of `python -m pricer.train ...` and sets RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT; pricer never launches anything itself. A SLURM job of several
tasks started by submitit (a sweep's trial under hydra-submitit-launcher with tasks_per_node=k)
has SLURM's variables instead: submitit's own TorchDistributedEnvironment turns them into the
same four (`_from_submitit`). Rank 0 makes every
decision that must be made once (the run's dir and names, the test-set scores, pushes,
run.json) and the other ranks receive it, so N processes are still one run. Without
WORLD_SIZE (a plain `python -m pricer.train`) every function here is a no-op on one rank.
torch is imported inside the functions: `--cfg job` and the sweeper never import it.
"""

import os
import pickle
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")
# Rank 0 alone scores the test set (and may wait on the Hub) while the others wait in a broadcast:
# longer than torch's 30 min default, so a full evaluation of an 8B model never times the group out.
TIMEOUT = timedelta(hours=2)


def rank() -> int:
    return int(_from_submitit().get("RANK", 0))


def world_size() -> int:
    return int(_from_submitit().get("WORLD_SIZE", 1))


def local_rank() -> int:
    """The device index of this process on its host (torchrun sets LOCAL_RANK per worker)."""
    return int(_from_submitit().get("LOCAL_RANK", 0))


def _from_submitit() -> "os._Environ[str]":
    """os.environ, with RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT exported first in one task of a
    submitit job of several (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the job's first node; the port
    from the job id, so a requeued job meets on the same one). CUDA_VISIBLE_DEVICES is left whole: each
    rank takes GPU LOCAL_RANK of its node, as under torchrun. A variable the user set stays."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return os.environ
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        env = TorchDistributedEnvironment()
        for key, value in (("MASTER_ADDR", env.master_addr), ("MASTER_PORT", env.master_port), ("RANK", env.rank),
                           ("WORLD_SIZE", env.world_size), ("LOCAL_RANK", env.local_rank),
                           ("LOCAL_WORLD_SIZE", env.local_world_size)):
            os.environ.setdefault(key, str(value))
    return os.environ


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the launcher's process group, once, before anything needs it.

    pricer needs the group earlier than the Trainer would make it (Hydra resolves the run dir
    before the job starts); accelerate's PartialState, which TrainingArguments builds, then
    finds it initialised and uses it. gloo carries the small objects pricer broadcasts (on CPU
    memory); on GPUs nccl carries DDP's gradients."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # before nccl: each rank owns its device
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)


def broadcast_object(obj: T, group: object = None) -> T:
    """Rank 0's `obj` on every rank (any picklable object; other ranks' `obj` is ignored), over the run's
    group or `group` (a sweep worker's hand-out of trials)."""
    if world_size() == 1:
        return obj
    import torch.distributed as dist

    init()
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def on_main(action: Callable[[], T]) -> T:
    """`action()` run on rank 0 only; its result, or the exception it raised, on every rank.

    A failure on rank 0 (a refused token, a signal during evaluation) is raised on every rank
    alike, so no rank waits forever for an answer that never comes."""
    if world_size() == 1:
        return action()
    outcome: tuple[bool, object] = (True, None)
    if is_main():
        try:
            outcome = (True, action())
        except BaseException as err:  # noqa: BLE001 - re-raised below, on every rank
            outcome = (False, err if _picklable(err) else RuntimeError(f"rank 0: {type(err).__name__}: {err}"))
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def _picklable(obj: object) -> bool:
    try:
        pickle.loads(pickle.dumps(obj))
        return True
    except Exception:  # noqa: BLE001 - any failure means: send a plain copy instead
        return False


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        init()
        dist.barrier()


def agreed_signal(signum: int | None) -> int | None:
    """The signal any rank received (the largest number if several), on every rank.

    torchrun forwards SIGTERM to all its workers, but a scheduler or a user may signal one
    rank only: all must stop at the same step, or the others hang in their next all-reduce."""
    if world_size() == 1:
        return signum
    import torch
    import torch.distributed as dist

    flag = torch.tensor([signum or 0])  # a CPU tensor: gloo carries it, also beside nccl (see init)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None
