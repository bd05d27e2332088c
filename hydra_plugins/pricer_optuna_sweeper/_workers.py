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
"""

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys

from pricer.interrupt import SIGNALS

from ._signals import SweepStop

log = logging.getLogger(__name__)

WORKER_ENV = "PRICER_SWEEP_WORKER"  # set in a worker: its index


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


def run_workers(n_jobs: int, devices: list[str], overrides: list[str], stop: SweepStop) -> list[int]:
    """Start the workers, wait for all of them, forwarding SIGTERM/SIGINT (recorded in `stop`); their exit codes.

    The forwarding handler is in before the first worker starts, and every signal reaches every
    worker once, whenever it comes: one that lands while the workers start (a preemption right
    after launch) is sent to those already started and to each later one as it starts. The
    handler runs in the main thread between two lines of the start loop (the kernel may hand the
    signal to any thread of this process, so blocking it here would not hold it back).
    """
    if devices and n_jobs > len(devices):
        log.warning("%d workers on %d GPUs: some GPUs run two trials at once", n_jobs, len(devices))
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
        threads = None if devices else cpu_threads_per_worker(n_jobs)
        for k in range(n_jobs):
            if stop.signum is not None:  # stopped before (or while) the workers start: start no more
                break
            proc = _start(k, devices[k % len(devices)] if devices else None, threads, overrides)
            sent[proc.pid] = 0
            procs.append(proc)
            deliver()  # a signal that came while it started
        return [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def cpu_threads_per_worker(n_jobs: int) -> int | None:
    """Workers that share the CPU split its cores; None where OMP_NUM_THREADS is set (the user's choice).

    Left alone, each worker's torch starts a thread per core: two workers on two cores ran a
    tiny model's step 50x slower (7 s instead of 0.13 s), their OpenMP threads spinning on
    each other's cores.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, len(os.sched_getaffinity(0)) // n_jobs)


def _start(index: int, device: str | None, threads: int | None, overrides: list[str]) -> subprocess.Popen:
    env = dict(os.environ, **{WORKER_ENV: str(index)})
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, *sys.orig_argv[1:], *overrides]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent, start_new_session=True)
    where = f"GPU {device}" if device is not None else f"the CPU, {env.get('OMP_NUM_THREADS', 'all')} threads"
    log.info("worker %d (pid %d) on %s", index, proc.pid, where)
    return proc


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the sweep process dies, instead of living on unseen."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
