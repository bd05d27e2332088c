"""Two sweep processes (two machines, in effect) share one study in a real PostgreSQL server.

The server is the distribution's (`apt-get install -y postgresql`, done by .ci/run), a
private one of the test session (conftest's postgres_server); each test gets a fresh
database. Skipped, with the reason, only where PostgreSQL is not installed.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("sweeper_toy", HERE / "test_sweeper.py")
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)  # the toy app and helpers, whatever pytest's import mode

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
