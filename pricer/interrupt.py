"""SIGTERM/SIGINT (preemption, Ctrl-C): save at this step, stop cleanly, exit saying so.

The signal only raises a flag; the Trainer itself saves a checkpoint at the end of
the current step and leaves its loop, so the checkpoint is a normal, resumable one
and the W&B run and pending pushes are closed by the usual path. A second signal
falls back to the default handler: the user can always force an exit.
"""

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Training stopped on a signal after saving; exit status 128 + signal number."""

    def __init__(self, signum: int, step: int | None, evaluating: bool = False) -> None:
        """`step` None: the signal came outside training (loading, pushing): nothing new was saved."""
        done = "training finished, adapter saved" if evaluating else "checkpoint saved"
        where = f"at step {step}: {done}" if step is not None else "outside training: its last checkpoint stands"
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}, "
                         "rerun the same command with resume=auto to continue")
        self.signum, self.step, self.evaluating = signum, step, evaluating

    def __reduce__(self):  # pickled as its arguments: rank 0's Interrupted reaches the other ranks whole
        return Interrupted, (self.signum, self.step, self.evaluating)


class RaiseOnSignal:
    """After training: a signal ends the evaluation at once (Interrupted, exit 128 + signal). The
    adapter is already saved and run.json says so, so `resume=` evaluates again and never trains."""

    def __init__(self, step: int) -> None:
        self.step, self.previous = step, {}

    def __enter__(self) -> "RaiseOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _raise(self, signum: int, frame) -> None:
        raise Interrupted(signum, self.step, evaluating=True)


class SignalStop:
    """SIGTERM/SIGINT during training: save at the end of this step and stop. The Trainer gets it as
    pricer.fit.StopOnSignal (with TrainerCallback's other hooks): the sweeper imports this module
    (Interrupted, SIGNALS) in processes that never import transformers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> "SignalStop":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        self.signum = signum
        self.restore()  # a second signal ends the process the default way

    def on_step_end(self, args, state, control, **kwargs):
        from pricer.distributed import agreed_signal

        self.signum = agreed_signal(self.signum)  # several ranks: a signal to any one stops all at this step
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
