"""SIGTERM/SIGINT to a sweep process: stop it cleanly, leaving its trial resumable.

While a job trains, pricer.train's own handler (pricer.fit.StopOnSignal) takes the
signal: it saves a checkpoint at the end of the step and raises Interrupted, which the
sweeper records as a WAITING trial (_study.requeue). Outside those windows this
handler takes it:
- during an in-process job (data or model loading, the final push) it raises
  Interrupted at once, as pricer.train does after its save: waiting for training to
  start would spend a preemption's grace time on a whole trial;
- anywhere else (claiming, telling, waiting for other workers) it only sets a flag: the
  loop stops before its next job, so the study is never left half-written.
A second signal gets the previous handler (the default: the user can always force an exit).
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pricer.interrupt import SIGNALS, Interrupted


class SweepStop:
    def __init__(self, raise_in_job: bool) -> None:
        self.raise_in_job = raise_in_job  # jobs run in this process (Hydra's basic launcher)
        self.signum: int | None = None
        self.in_job = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "SweepStop":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def stop(self, signum: int) -> None:
        """Record a signal that a job handled itself (its Interrupted): the loop stops all the same."""
        self.signum = self.signum or signum

    @contextmanager
    def job(self) -> Iterator[None]:
        """The window in which a signal raises Interrupted. Enter it inside the try that catches the job's
        errors (_study._launch_guarded): the raise may come on the window's first or last line.

        A signal that came since the loop last looked (claiming, starting the heartbeat thread, which
        waits for it to run: long under load) only set the flag: it raises here, so the job never starts.
        """
        self.in_job = True  # first: a signal from here on raises in the handler itself
        try:
            if self.signum is not None:
                raise Interrupted(self.signum, None)
            yield
        finally:
            self.in_job = False

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second one: force
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        if self.in_job and self.raise_in_job:
            raise Interrupted(signum, None)
