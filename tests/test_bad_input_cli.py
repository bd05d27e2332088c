"""Bad input to each command, run as a user runs it: one line naming the key or file and the fix.

Each case runs the real command in a subprocess and checks four things: a non-zero exit
code, stderr holding that one `error:` line and nothing else (no traceback, no progress
bar of a model or dataset load), and nothing new on disk (no database file, no output
dir). The cases are tables; `{tmp}` in an argument is the test's own tmp_path.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT


def run_module(module: str, args: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m pricer.MODULE ...` from `cwd`, output captured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_one_clear_line(proc: subprocess.CompletedProcess, message: str) -> str:
    """Exit code != 0, and stderr is exactly one `error:` line holding `message`; that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert message in lines[0]
    return lines[0]


def with_tmp(args: list[str], tmp_path: Path) -> list[str]:
    return [arg.replace("{tmp}", str(tmp_path)) for arg in args]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A text file, a dir that is no run, a run dir without an adapter (its config only)."""
    (tmp_path / "notes.txt").write_text("not a database\n")
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model: {}\n")
    (run / "run.json").write_text('{"repo_id": "me/pricer-2024-09-13_13.04.39", "private": true}')
    return tmp_path


SWEEPS = [  # python -m pricer.train experiment=demo sweep=tpe output_root={tmp} ...
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 must be at least 1: e.g. hydra.sweeper.n_trials=20"),
    (["hydra.sweeper.n_trials=-3"], "hydra.sweeper.n_trials=-3 must be at least 1"),
    (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 must be at least 1: e.g. hydra.sweeper.n_jobs=1"),
    (["hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate=2.0 must lie in [0, 1]"),
    (["hydra.sweeper.storage=notaurl://x"], "hydra.sweeper.storage=notaurl://x is not a database URL"),
    (["hydra.sweeper.storage=sqlite:////nonexistent/dir/optuna.db"], "folder /nonexistent/dir does not exist"),
    (["hydra.sweeper.storage=postgresql+psycopg2://u:secret@127.0.0.1:1/db"],
     "hydra.sweeper.storage=postgresql+psycopg2://u:***@127.0.0.1:1/db: cannot open the database"),
    (["lora.lora_dropout=interval(0.5, 0.1)"], "low 0.5 > high 0.1: write interval(0.1, 0.5)"),
    (["optimizer.learning_rate=tag(log, interval(0, 1e-3))"], "`low > 0` must hold for `log=True`"),
    (["optimized_metric=val/price_eror"], "optimized_metric=val/price_eror is not one of val/price_error"),
    (["lora.lora_alpha=-1"], "lora.lora_alpha=-1 must be positive"),  # the base config: today every trial failed
    (["hydra.sweeper.params={lora.lora_dropout:'choice(0.1, 1.5)'}"],
     "search-space value lora.lora_dropout=1.5: lora.lora_dropout=1.5 must lie in [0, 1)"),
    (["lora.lora_dropout=interval(0.0, 1.0)"], "search-space value lora.lora_dropout=1.0: lora.lora_dropout=1.0 must lie"),
    (["lora=choice(r8, r99)"], "search-space value lora=r99: In 'train': Could not find 'lora/r99'"),
    (["evaluation.eval_steps=null"], "a pruner needs a validation score during training: set evaluation.eval_steps=N"),
]


@pytest.mark.parametrize(("overrides", "message"), SWEEPS, ids=[o[0] for o, _ in SWEEPS])
def test_bad_sweep_is_refused_before_the_first_trial(tmp_path: Path, overrides: list[str], message: str,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """The real command, `python -m pricer.train ... sweep=tpe` (runpy runs the module as __main__ as -m
    does), in this process: a subprocess would spend ~6 s a row importing TRL before the same check."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["pricer.train", "experiment=demo", "sweep=tpe",
                                      f"output_root={tmp_path / 'out'}", *overrides])
    monkeypatch.delitem(sys.modules, "pricer.train", raising=False)  # imported by an earlier test: -m runs a fresh copy
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("pricer.train", run_name="__main__", alter_sys=True)
    err = capsys.readouterr().err
    line = assert_one_clear_line(subprocess.CompletedProcess([], exit_.value.code, "", err), message)
    assert exit_.value.code == 2 and "secret" not in line
    assert not (tmp_path / "out").exists(), files_under(tmp_path)  # no sweep dir, no optuna.db, no trial dir


COMPARES = [  # python -m pricer.compare TARGET, from {tmp}
    (["{tmp}/notes.txt"], "{tmp}/notes.txt is not an SQLite database"),
    (["{tmp}/empty"], "{tmp}/empty: no optuna.db there"),
    (["sqlite:///{tmp}/optuna.dbb"], "no such file {tmp}/optuna.dbb"),  # today: an empty optuna.dbb was left behind
    (["sqlite:///outputs/sweeps/tpe/optuna.db"], "no such file outputs/sweeps/tpe/optuna.db: check the path"),
    (["postgresql+psycopg2://u:secret@127.0.0.1:1/db"], "postgresql+psycopg2://u:***@127.0.0.1:1/db: cannot open the database"),
    (["notaurl://x"], "notaurl://x: cannot open the database"),
]


@pytest.mark.parametrize(("args", "message"), COMPARES, ids=[a[0].replace("{tmp}", "") for a, _ in COMPARES])
def test_bad_compare_target(workdir: Path, args: list[str], message: str) -> None:
    before = files_under(workdir)
    started = time.monotonic()
    proc = run_module("pricer.compare", with_tmp(args, workdir), cwd=workdir)
    line = assert_one_clear_line(proc, message.replace("{tmp}", str(workdir)))
    assert "secret" not in line
    assert time.monotonic() - started < 30  # an unreachable server: refused at once, or after connect_timeout
    assert files_under(workdir) == before


PUSHES = [  # python -m pricer.push RUN_DIR [--attempts N] [--wait-s S]
    (["{tmp}/nope"], "{tmp}/nope: no such run dir"),
    (["{tmp}/empty"], "{tmp}/empty is not a pricer run dir (no run.json)"),
    (["{tmp}/run", "--attempts", "0"], "--attempts 0 must be at least 1"),
    (["{tmp}/run", "--attempts", "-2"], "--attempts -2 must be at least 1"),
    (["{tmp}/run", "--wait-s", "-1"], "--wait-s -1 must be >= 0"),
]


@pytest.mark.slow  # the CLI in subprocesses (well under a second each: pricer.push imports no transformers)
@pytest.mark.parametrize(("args", "message"), PUSHES, ids=[" ".join(a).replace("{tmp}", "") for a, _ in PUSHES])
def test_bad_push_arguments(workdir: Path, args: list[str], message: str) -> None:
    before = files_under(workdir)
    proc = run_module("pricer.push", with_tmp(args, workdir), cwd=workdir)
    assert_one_clear_line(proc, message.replace("{tmp}", str(workdir)))
    assert files_under(workdir) == before  # no pushed.json, run.json untouched


BASE = ["--adapter", "none", "model=tiny", "data=sample", "hardware=cpu", "quant=none"]
EVALUATES = [  # python -m pricer.evaluate ..., from {tmp}: its default output would be {tmp}/outputs/eval/...
    (["./outputs/runs/nope"], "./outputs/runs/nope: no such run dir"),  # today: looked up as a Hub repo id
    (["outputs/runs/nope"], "outputs/runs/nope: no such run dir"),
    (["{tmp}/notes.txt"], "{tmp}/notes.txt is a file"),
    (["{tmp}/run"], "{tmp}/run holds no adapter (no adapter/adapter_config.json or adapter_config.json)"),
    ([*BASE, "--items", "-5"], "--items -5 must be a positive integer"),
    ([*BASE, "--items", "0"], "--items 0 must be a positive integer"),  # today: 0 meant the default, 250
    ([*BASE, "--top-k", "-2"], "--top-k -2 must be a positive integer"),
    ([*BASE, "--batch-tokens", "0"], "--batch-tokens 0 must be a positive integer"),
    ([*BASE, "evaluation.nonsense=3"], "evaluation.nonsense is not a known key"),
    ([*BASE, "+evaluation.test_item=3"], "evaluation.test_item is not a known key (did you mean evaluation.test_items?)"),
    (["--adapter", "none", "model=nope"], "Could not find 'model/nope'"),
]


@pytest.mark.parametrize(("args", "message"), EVALUATES,
                         ids=[" ".join(x for x in a if x not in BASE).replace("{tmp}", "") for a, _ in EVALUATES])
@pytest.mark.slow  # the CLI in subprocesses, 11 cases
def test_bad_evaluate_input(workdir: Path, args: list[str], message: str) -> None:
    before = files_under(workdir)
    proc = run_module("pricer.evaluate", with_tmp(args, workdir), cwd=workdir)
    assert_one_clear_line(proc, message.replace("{tmp}", str(workdir)))
    assert files_under(workdir) == before  # no outputs/eval/...


@pytest.mark.parametrize(("module", "args"), [("pricer.push", ["{tmp}/run", "--attempts", "0"]),
                                              ("pricer.evaluate", ["{tmp}/notes.txt"]),
                                              ("pricer.compare", ["{tmp}/empty"])], ids=["push", "evaluate", "compare"])
def test_a_refusal_imports_no_torch(workdir: Path, module: str, args: list[str]) -> None:
    """push, evaluate and compare refuse bad input before importing torch or transformers: well under
    a second, not the ~7 s their import takes (what the tables above rely on)."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = [{module!r}, *{with_tmp(args, workdir)!r}]\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
        "finally:\n    print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "error: " in out.stderr, out.stderr[-2000:]
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]
