"""SIGTERM/SIGINT (preemption, Ctrl-C): save at this step, stop cleanly, exit saying so.

The signal only raises a flag; the Trainer itself saves a checkpoint at the end of
the current step and leaves its loop, so the checkpoint is a normal, resumable one
and the W&B run and pending pushes are closed by the usual path. A second signal
falls back to the default handler: the user can always force an exit.

In a SLURM job of submitit (hydra-submitit-launcher) there is a third signal: the one
submitit asks SLURM to send `signal_delay_s` before the time limit (SIGUSR2 unless
SUBMITIT_PREEMPT_SIGNAL names another). submitit's own handler would requeue the job at
once, mid-step, with nothing saved; pricer takes that signal like SIGTERM, saves, and
only then hands the job to submitit (SubmititRequeue, a Hydra callback of sweep=slurm).
"""

import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.experimental.callback import Callback

SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what a sweep process forwards to its workers
T = TypeVar("T")
SUBMITIT_SLURM = "slurm"  # SUBMITIT_EXECUTOR in a job submitit started through sbatch


def submitit_signal() -> int | None:
    """The signal submitit's SLURM jobs get before their time limit (and on preemption where the
    cluster sends the user signal), or None outside such a job."""
    if os.environ.get("SUBMITIT_EXECUTOR") != SUBMITIT_SLURM:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def job_signals() -> tuple[int, ...]:
    """The signals after which a job saves and stops: SIGTERM, SIGINT and, in a submitit SLURM job, submitit's."""
    extra = submitit_signal()
    return SIGNALS if extra is None or extra in SIGNALS else (*SIGNALS, extra)


def how_to_continue(signum: int) -> str:
    """In a submitit SLURM job, submitit's signal (time limit, preemption) is followed by its requeue of the job,
    which continues the run by itself; after any other signal the user continues it."""
    if signum == submitit_signal():
        return "submitit requeues this SLURM job, which continues the run from there"
    return "rerun the same command with resume=auto to continue"


class Interrupted(Exception):
    """Training stopped on a signal after saving; exit status 128 + signal number.

    `agreed`: every rank of the run raises this same Interrupted at the same point (a signal the
    ranks agreed on, or rank 0's carried to all by pricer.distributed.on_main), so they may meet
    once more while rank 0 records it. One raised on a single rank (a signal to that rank alone,
    outside training) is not: that rank exits at once, and the launcher stops the others."""

    def __init__(self, signum: int, step: int | None, evaluating: bool = False, agreed: bool = False) -> None:
        """`step` None: the signal came outside training (loading, pushing): nothing new was saved."""
        done = "training finished, adapter saved" if evaluating else "checkpoint saved"
        where = f"at step {step}: {done}" if step is not None else "outside training: its last checkpoint stands"
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}, {how_to_continue(signum)}")
        self.signum, self.step, self.evaluating, self.agreed = signum, step, evaluating, agreed

    def __reduce__(self):  # pickled as its arguments: rank 0's Interrupted reaches the other ranks whole
        return Interrupted, (self.signum, self.step, self.evaluating, self.agreed)


_raised: list[int] = []  # the signals RaiseOnSignal raised in this process, while it is entered


class RaiseOnSignal:
    """Outside training (loading, claiming, pushing): a signal ends the run at once (Interrupted with no
    step, exit 128 + signal); nothing new was saved, the run's last checkpoint stands.

    The handler raises inside whatever code runs, and a library's broad `except Exception` there
    can swallow the Interrupted (peft's type hints as the config was validated, in a CI run: the
    run trained on as if no signal had come). So the signal is also kept, and raise_if_signalled
    raises it again where the run next checks: before its claim and as training starts."""

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "RaiseOnSignal":
        _raised.clear()
        if threading.current_thread() is threading.main_thread():
            for sig in job_signals():
                self.previous[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        _raised.clear()

    def _raise(self, signum: int, frame) -> None:
        _raised.append(signum)
        raise Interrupted(signum, None)


def raise_if_signalled() -> None:
    """Interrupted again for a signal RaiseOnSignal raised and something swallowed; nothing otherwise."""
    if _raised:
        raise Interrupted(_raised[0], None)


class SignalStop:
    """SIGTERM/SIGINT from the start of training to the end of scoring, one handler throughout.

    During training a signal only sets a flag: the Trainer saves at the end of this step and
    stops. Once training ended (`training_ended`, after the adapter and run.json's "trained"
    are written) a signal ends the run without waiting: the adapter is saved, so a resume only
    evaluates. One handler for both phases leaves no instant between them in which a signal
    would reach the handler outside (and read as "outside training"). The handlers go in when
    training starts (`install`) and come out when the `with` block around training and scoring ends.

    After training rank 0 alone scores (`score_on_main`) while the other ranks wait for its
    numbers. A signal raises at once on one rank and inside that scoring; anywhere else on a
    run of several ranks it is held, and raised on every rank alike where they next meet: a
    rank that raised alone would wait in its own collective for ranks that are in another.
    The Trainer gets this as pricer.fit.StopOnSignal (with TrainerCallback's other hooks): the
    sweeper imports this module (Interrupted, SIGNALS) in processes that never import transformers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.trained_step: int | None = None  # set once training ended: a signal then ends the run
        self.scoring = False  # rank 0 inside score_on_main: a signal raises there, and on_main carries it to all
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "SignalStop":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def install(self) -> "SignalStop":
        raise_if_signalled()  # one that came before training and was swallowed: training does not start
        if threading.current_thread() is threading.main_thread() and not self.previous:  # handlers only there
            for sig in job_signals():
                self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def training_ended(self, step: int, signum: int | None) -> None:
        """From here a signal ends the run; one that came during training (`signum`, agreed by all
        ranks) raises now, after the adapter was saved. One that came since the ranks agreed is held
        for score_on_main."""
        self.trained_step = step
        if signum is not None:
            raise Interrupted(signum, step, evaluating=True, agreed=True)

    def score_on_main(self, score: Callable[[], T]) -> T:
        """`score()` run on rank 0, its result on every rank (pricer.distributed.on_main). A signal held
        until now, or one that comes while rank 0 scores, raises there and so on every rank; one that
        reached another rank meanwhile raises on every rank once the scores are in."""
        from pricer.distributed import agreed_signal, on_main

        def on_rank0() -> T:
            self.scoring = True
            try:
                self._raise_held()
                return score()
            finally:
                self.scoring = False

        result = on_main(on_rank0)
        self.signum = agreed_signal(self.signum)
        self._raise_held()
        return result

    def _raise_held(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, self.trained_step, evaluating=True, agreed=True)

    def _on_signal(self, signum: int, frame) -> None:
        from pricer.distributed import world_size

        if self.trained_step is not None and (self.scoring or world_size() == 1):
            raise Interrupted(signum, self.trained_step, evaluating=True, agreed=self.scoring)
        self.signum = signum  # training: the Trainer stops at this step's end; after it: held (see the class)
        self.restore()  # a second signal ends the process the way it would without pricer

    def on_step_end(self, args, state, control, **kwargs):
        from pricer.distributed import agreed_signal

        self.signum = agreed_signal(self.signum)  # several ranks: a signal to any one stops all at this step
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class SubmititRequeue(Callback):
    """Hydra callback (sweep=slurm): how a submitit SLURM job ends after pricer saved on a signal.

    pricer.train raises Interrupted once the checkpoint is saved; Hydra would hand that to
    submitit as the job's result, and the sweep would read the trial as stopped. Instead:
    - submitit's signal (time limit, or preemption where SLURM sends it): submitit's own
      handler now runs, late but as designed: it pickles the same job again (hydra-submitit-
      launcher's checkpoint(): the same overrides) and runs `scontrol requeue`, within
      max_num_timeout; past it, the trial fails with that reason;
    - SIGTERM (`scontrol requeue`, preemption, scancel): the job exits without a result,
      and SLURM's state decides: requeued, it runs again; cancelled, the sweep fails the trial.
    A requeued job gets the same trial number and resumes the trial's run (pricer.trial.resumable_run_dir).
    """

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        error = getattr(job_return, "_return_value", None)
        if not isinstance(error, Interrupted) or os.environ.get("SUBMITIT_EXECUTOR") != SUBMITIT_SLURM:
            return
        import logging
        import sys

        log = logging.getLogger("pricer")
        handler = signal.getsignal(error.signum)
        if error.signum == submitit_signal() and callable(handler):
            from submitit.core.utils import UncompletedJobError

            log.info("SLURM job: %s saved; submitit requeues it", signal.Signals(error.signum).name)
            try:
                handler(error.signum, None)  # requeues and exits; raises where it may not requeue
            except UncompletedJobError as err:
                job_return.return_value = RuntimeError(f"SLURM time limit: {err} (hydra.launcher.max_num_timeout)")
                return
        log.info("SLURM job: %s saved; exiting for SLURM to requeue or end it", signal.Signals(error.signum).name)
        sys.exit(128 + error.signum)


def interruption_in(err: BaseException | None) -> Interrupted | None:
    """The signal's Interrupted behind an error, if one is: a library may re-raise it as its own error
    (TRL's lazy import turns it into a RuntimeError, OmegaConf into a config error)."""
    seen, depth = err, 0
    while seen is not None and depth < 20:
        if isinstance(seen, Interrupted):
            return seen
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    return None
