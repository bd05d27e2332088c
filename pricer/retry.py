"""The Hub's retry policy, for every call pricer makes to it: which errors can pass on a retry,
and exponential backoff between attempts (hub.push_attempts, hub.push_wait_s). One module that
the account check (pricer.hub) and the pushes (pricer.push) both use, so neither imports the other
for it."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("pricer")
T = TypeVar("T")


def can_succeed_later(err: Exception) -> bool:
    """A rate limit (429), the Hub's own trouble (5xx, 408) or a dropped connection can pass on a
    retry; a bad or missing token (401, 403), a missing repo (404) or a refused name fail the same
    way every time, so retrying them only delays the one line that says what to fix."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status is not None:
        return status in (408, 429) or status >= 500
    names = {cls.__name__ for cls in type(err).__mro__}  # httpx, httpx2 and requests name them alike
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutError", "ConnectionResetError"})


def call_with_retries(action: Callable[[], T], what: str, attempts: int, wait_s: float) -> T:
    """Run `action`, retrying what can succeed later with exponential backoff; the last error is raised."""
    from pricer.interrupt import Interrupted

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Interrupted:
            raise  # a signal: the run stops as signalled, not as a failed push
        except Exception as err:
            retry = can_succeed_later(err) and attempt < attempts
            log.warning("push %s failed (attempt %d/%d%s): %s", what, attempt, attempts,
                        "" if retry or attempt == attempts else ", not retried", str(err).splitlines()[0][:200])
            if not retry:
                raise
            time.sleep(wait_s * 2 ** (attempt - 1))
    raise ValueError(f"attempts={attempts} must be >= 1")


def with_retries(action: Callable[[], object], what: str, attempts: int, wait_s: float) -> bool:
    """Like call_with_retries, but a final failure is a False, never an exception: training goes on."""
    try:
        call_with_retries(action, what, attempts, wait_s)
        return True
    except Exception:
        return False
