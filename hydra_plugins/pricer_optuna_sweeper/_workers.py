"""n_jobs worker processes, one per GPU, each running the sweep's own trial loop.

A worker is the same command line again with `hydra.sweeper.n_jobs=1` and the resolved
sweep dir (the storage URL and study name come through the environment): it composes
the same config and runs trials one at a time in its own process (Hydra's in-process
launcher is safe with one job at a time), on its own GPU through CUDA_VISIBLE_DEVICES.
Hydra's on_multirun_* callbacks therefore run once per worker, on_job_* once per trial.

Signals: each worker runs in its own session, so a terminal's Ctrl-C reaches only the
sweep process, which forwards it (and SIGTERM) to every worker exactly once, also to
those started after it came: each saves its trial's checkpoint and leaves the trial
WAITING. A second signal is forwarded too (the workers' forced exit). A worker whose
parent dies gets SIGTERM from the kernel.

k GPUs per trial (`gpus_per_trial=k`): a worker is that command under torchrun, k ranks on
its k GPUs (gloo ranks on CPU), and every trial is one run of k ranks. Rank 0 runs the
worker's ask-run-tell loop as above and hands each trial's job overrides to the other ranks
(`hand_out`), which only run the jobs they are handed (`follow`): all k ranks start the
trial's job at once, in process, and pricer.distributed makes them one run. Chosen over
starting each trial as a torchrun child of a one-process worker because the job stays
Hydra's in-process job on every rank: rank 0 gets its return value, its exceptions
(TrialPruned, Interrupted) and its output dir as with one rank, so pruning, signals, resume
and the run claim need no second path. The hand-out uses a gloo group of its own with a long
timeout: between trials rank 0 may wait for other workers' trials for hours, which the job's
group (pricer.distributed.TIMEOUT) would count as a hang. torchrun forwards a signal to every
rank and gives them 30 s to save; it then exits 1 with a traceback, whatever its ranks did,
so the worker runs torchrun through this module, which exits 128 + signal instead, as every
other stopped worker does.
"""

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta

from pricer import distributed
from pricer.interrupt import SIGNALS, Interrupted
from pricer.presets import override_key

from ._signals import SweepStop

log = logging.getLogger(__name__)

WORKER_ENV = "PRICER_SWEEP_WORKER"  # set in a worker: its index
HAND_OUT_TIMEOUT = timedelta(days=7)  # ranks > 0 wait this long for rank 0's next trial (it may wait for other workers')
_hand_out_group = None


def detect_devices() -> list[str]:
    """The GPUs to pin workers to: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def worker_devices(n_jobs: int, devices: list[str], ranks: int = 1) -> list[list[str]]:
    """The GPUs of each worker: `ranks` of them in turn from `devices`, wrapping round when there are too few
    ([] for every worker on a machine without GPUs). shared_devices says which cards that puts two ranks on."""
    if not devices:
        return [[] for _ in range(n_jobs)]
    return [[devices[(k * ranks + r) % len(devices)] for r in range(ranks)] for k in range(n_jobs)]


def shared_devices(assigned: list[list[str]]) -> dict[str, int]:
    """Each GPU that more than one rank would use, with how many use it."""
    counts: dict[str, int] = {}
    for device in (d for worker in assigned for d in worker):
        counts[device] = counts.get(device, 0) + 1
    return {device: n for device, n in counts.items() if n > 1}


def run_workers(n_jobs: int, devices: list[str], overrides: list[str], stop: SweepStop, ranks: int = 1,
                worker_overrides: list[list[str]] | None = None) -> list[int]:
    """Start the workers, wait for all of them, forwarding SIGTERM/SIGINT (recorded in `stop`); their exit codes.

    The forwarding handler is in before the first worker starts, and every signal reaches every
    worker once, whenever it comes: one that lands while the workers start (a preemption right
    after launch) is sent to those already started and to each later one as it starts. The
    handler runs in the main thread between two lines of the start loop (the kernel may hand the
    signal to any thread of this process, so blocking it here would not hold it back).
    """
    assigned = worker_devices(n_jobs, devices, ranks)
    if shared := shared_devices(assigned):
        log.warning("%d workers x %d ranks on %d GPUs: GPU %s runs several at once", n_jobs, ranks, len(set(devices)),
                    ", ".join(shared))
    procs: list[subprocess.Popen] = []
    received: list[int] = []  # every signal so far, in order
    sent: dict[int, int] = {}  # worker pid -> how many of `received` it was sent

    def deliver() -> None:
        for proc in procs:
            while sent[proc.pid] < len(received) and proc.poll() is None:
                index = sent[proc.pid]
                sent[proc.pid] = index + 1  # claimed before sending: a handler running in between sends the next
                proc.send_signal(received[index])

    def forward(signum: int, frame: object) -> None:
        stop.stop(signum)
        received.append(signum)
        deliver()

    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS} if _in_main_thread() else {}
    try:
        threads = None if devices else cpu_threads_per_worker(n_jobs * ranks)
        for k in range(n_jobs):
            if stop.signum is not None:  # stopped before (or while) the workers start: start no more
                break
            proc = _start(k, assigned[k], threads, [*overrides, *(worker_overrides[k] if worker_overrides else [])], ranks)
            sent[proc.pid] = 0
            procs.append(proc)
            deliver()  # a signal that came while it started
        # Poll, not proc.wait(): a signal the kernel hands another thread runs its Python handler only when the
        # main thread next runs Python, and a main thread blocked in waitpid would forward it only once a worker
        # ended (under load the workers then ran every trial, and the sweep exited 143 after them).
        while any(proc.poll() is None for proc in procs):
            time.sleep(0.1)
        return [proc.returncode for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def cpu_threads_per_worker(n_processes: int) -> int | None:
    """Workers (and their ranks) that share the CPU split its cores; None where OMP_NUM_THREADS is set (the user's choice).

    Left alone, each worker's torch starts a thread per core: two workers on two cores ran a
    tiny model's step 50x slower (7 s instead of 0.13 s), their OpenMP threads spinning on
    each other's cores.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, len(os.sched_getaffinity(0)) // n_processes)


def _start(index: int, devices: list[str], threads: int | None, overrides: list[str], ranks: int) -> subprocess.Popen:
    env = dict(os.environ, **{WORKER_ENV: str(index)})
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = without_keys(sys.orig_argv[1:], overrides)
    if ranks > 1:  # this module's __main__ is torchrun; --standalone: a free port of its own per worker
        command = ["-m", __name__, "--nproc_per_node", str(ranks), "--standalone", *_torchrun_script(command)]
    proc = subprocess.Popen([sys.executable, *command, *overrides], env=env, preexec_fn=_die_with_parent,
                            start_new_session=True)
    where = f"GPU {','.join(devices)}" if devices else f"the CPU, {env.get('OMP_NUM_THREADS', 'all')} threads"
    log.info("worker %d (pid %d) on %s%s", index, proc.pid, where, f" x {ranks} ranks (torchrun)" if ranks > 1 else "")
    return proc


def without_keys(argv: list[str], overrides: list[str]) -> list[str]:
    """The sweep's command line less each `key=value` that a worker's own override sets again: the
    worker's value (its share of a card's memory, its own n_jobs=1) replaces the user's, where both
    would be a key given twice, which pricer refuses."""
    keys = {override_key(override) for override in overrides}
    return [arg for arg in argv if arg.startswith("-") or "=" not in arg or override_key(arg) not in keys]


def _torchrun_script(argv: list[str]) -> list[str]:
    """This process's command line, less the interpreter's own options, as torchrun takes it:
    `-m pricer.train ARGS` or `SCRIPT ARGS`."""
    for i, arg in enumerate(argv):
        if arg == "-m" or not arg.startswith("-"):
            return argv[i:]
    raise RuntimeError(f"cannot run {argv} under torchrun: start the sweep as python -m MODULE or python SCRIPT")


def hand_out(overrides: list[str] | None, number: int | None = None) -> None:
    """Rank 0 of a worker of k ranks: the next trial's job (its overrides and number) to the other ranks;
    None: no more jobs, and every rank leaves the process group. On one rank: nothing."""
    if distributed.world_size() > 1:
        distributed.broadcast_object(None if overrides is None else (overrides, number), group=hand_out_group())
        if overrides is None:
            _leave()


def follow(launch: Callable[[list[str], int], object], stop: SweepStop) -> None:
    """Ranks > 0 of a worker: run each job rank 0 hands out, in a Hydra dir of its own (`{job}/rank{n}`, as a
    run's other ranks keep theirs in `{run dir}/rank{n}`), until rank 0 says there are no more.

    A signal reaches every rank (torchrun forwards it): in a job each rank stops as rank 0 does (the
    job's own handler, or SweepStop's Interrupted while it loads), and rank 0 records the trial."""
    while (job := distributed.broadcast_object(None, group=hand_out_group())) is not None:
        overrides, number = job
        try:
            with stop.job():
                launch([*overrides, f"hydra.sweep.subdir={number}/rank{distributed.rank()}"], number)
        except Exception as err:  # noqa: BLE001 - rank 0 met the same error in the same job and recorded the trial
            if not isinstance(err, Interrupted):
                log.warning("rank %d, trial %d: %s: %s", distributed.rank(), number, type(err).__name__, err)
    _leave()


def _leave() -> None:
    """Every rank leaves the process group together before it exits: a process that exits with a second
    gloo group still open aborted ('terminate called without an active exception') in 2 exits of 6."""
    global _hand_out_group
    import torch.distributed as dist

    dist.barrier(group=hand_out_group())
    dist.destroy_process_group()
    _hand_out_group = None


def hand_out_group():
    """The hand-out's gloo group with its long timeout. Every rank makes it at once (new_group is collective):
    rank 0 before its first claim, the others as they start to follow."""
    global _hand_out_group
    if _hand_out_group is None:
        import torch.distributed as dist

        distributed.init()
        _hand_out_group = dist.new_group(backend="gloo", timeout=HAND_OUT_TIMEOUT)
    return _hand_out_group


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the sweep process dies, instead of living on unseen."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


if __name__ == "__main__":
    # torchrun for a worker of k ranks. On SIGTERM/SIGINT torchrun forwards the signal to its ranks, waits
    # for them (they save and requeue their trial) and raises SignalException, exiting 1 with a traceback:
    # here that is a stopped worker, exit 128 + signal, as a one-process worker stopped by a signal exits.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    try:
        main(sys.argv[1:])
    except SignalException as err:
        sys.exit(128 + int(err.sigval))
