"""Two sweep processes (two machines, in effect) share one study in a real PostgreSQL server.

The server is the distribution's (`apt-get install -y postgresql`, done by .ci/run),
started here with pg_ctlcluster and stopped again if this test started it; each run
gets a fresh database. Skipped, with the reason, only where PostgreSQL is not installed.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("sweeper_toy", HERE / "test_sweeper.py")
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)  # the toy app and helpers, whatever pytest's import mode

ROLE, PASSWORD = "pricer_test", "pricer_test"


def _psql(sql: str) -> None:
    subprocess.run(["su", "postgres", "-c", f'psql -v ON_ERROR_STOP=1 -qc "{sql}"'], check=True,
                   capture_output=True, timeout=60)


def _cluster() -> tuple[str, str, str] | None:
    """(version, name, status) of the first cluster pg_lsclusters lists."""
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30).stdout
    fields = out.split()
    return (fields[0], fields[1], fields[3]) if len(fields) >= 4 else None


@pytest.fixture(scope="module")
def postgres_url():
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    if os.geteuid() != 0:
        pytest.skip("starting the PostgreSQL cluster needs root (pg_ctlcluster, su postgres)")
    cluster = _cluster()
    if cluster is None:
        pytest.skip("PostgreSQL is installed but has no cluster (pg_createcluster 15 main)")
    version, name, status = cluster
    started = status != "online"
    if started:
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, timeout=120)
    db = f"pricer_{uuid.uuid4().hex[:8]}"
    try:
        _psql(f"DO \\$\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
              f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'; END IF; END \\$\\$;")
        _psql(f"CREATE DATABASE {db} OWNER {ROLE}")
        yield f"postgresql+psycopg2://{ROLE}:{PASSWORD}@127.0.0.1:5432/{db}"
        _psql(f"DROP DATABASE {db} WITH (FORCE)")
    finally:
        if started:
            subprocess.run(["pg_ctlcluster", version, name, "stop"], check=False, timeout=120)


@pytest.mark.slow  # starts PostgreSQL
def test_two_sweep_processes_share_one_study(tmp_path: Path, postgres_url: str) -> None:
    toy.write_toy(tmp_path)
    n_trials = 6
    common = [f"hydra.sweeper.storage='{postgres_url}'", f"hydra.sweeper.n_trials={n_trials}", "sleep=0.05"]
    # different sweep dirs (no shared lock file) and seeds, as on two machines
    procs = [subprocess.Popen([sys.executable, "toy.py", *common, f"hydra.sweep.dir=sweep{k}",
                               f"hydra.sweeper.sampler.seed={k}"],
                              cwd=tmp_path, env=toy.toy_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for k in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    study = toy.study(tmp_path, postgres_url)
    assert toy.states(study) == {"COMPLETE": n_trials}  # all landed, none over the budget
    ran = toy.runs(tmp_path)
    assert sorted(r["number"] for r in ran) == list(range(n_trials))  # no trial ran twice
    assert len({r["pid"] for r in ran}) == 2  # both processes took trials
    for t in study.trials:
        assert t.params["x"] == next(r["x"] for r in ran if r["number"] == t.number)
