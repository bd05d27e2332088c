"""What keeps workers of one study out of each other's way: locks and heartbeats.

A claim (count the budget, ask Optuna for a trial) must not interleave between workers,
or two of them could both take the last trial: a file lock covers the threads and
processes of one sweep dir, a PostgreSQL advisory lock covers sweeps on other machines.
A heartbeat thread marks a running trial alive, so a dead worker's trial can be told
apart and re-queued.
"""

import fcntl
import logging
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import Trial

log = logging.getLogger(__name__)

@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """flock: exclusive between the threads and processes of one sweep dir."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def database_lock(url: str, name: str) -> Iterator[None]:
    """Exclusive between every sweep on this database, whichever sweep dir or machine it runs from.

    PostgreSQL: an advisory lock named `name`. SQLite: a file lock beside the database file
    (two sweeps started at once on a new file would otherwise both create Optuna's tables, and
    one dies on a duplicate alembic_version row). Other databases: none.
    """
    if url.startswith("postgresql"):
        with _engine(url).connect() as conn:
            key = zlib.crc32(name.encode())
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    elif (database := sqlite_file(url)) is not None:
        with file_lock(database.with_name(database.name + ".lock")):
            yield
    else:
        yield


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and for SQLite in memory."""
    parsed = sqlalchemy.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


@lru_cache(maxsize=4)
def _engine(url: str) -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


@contextmanager
def heartbeat(study: optuna.Study, trial: Trial) -> Iterator[None]:
    """Tell the storage this trial is alive while its job runs."""
    stop = threading.Event()
    interval = study._storage.get_heartbeat_interval()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                study._storage.record_heartbeat(trial._trial_id)
            except Exception as err:  # noqa: BLE001 - a dead beat thread would get a live trial re-queued
                log.warning("heartbeat of trial %d not recorded (%s); retrying", trial.number, err)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
