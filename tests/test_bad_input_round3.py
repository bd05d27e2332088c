"""Bad input to every command (unreadable files, offline Hub sources, damaged runs and studies, W&B and push
settings): each case runs the real command and expects one `error:` line naming the problem and the fix, exit 2,
before any model load, and nothing written.

The commands run in this process (conftest.run_cli_in_process) where they are refused before
loading anything; what needs a fresh process or trains runs as a subprocess and is marked slow.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose_train, run_cli, run_cli_in_process
from omegaconf import OmegaConf

from pricer import PACKAGE_DIR

DEMO = ["experiment=demo"]
SAMPLE_TRAIN = PACKAGE_DIR / "sample_data" / "train.jsonl"
SAMPLE_TEST = PACKAGE_DIR / "sample_data" / "test.jsonl"


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(proc: subprocess.CompletedProcess, message: str, code: int = 2) -> str:
    """Exit `code`, no traceback, exactly one `error:` line on stderr, holding `message`; that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert message in errors[0], errors[0]
    return errors[0]


def saved_run(folder: Path, overrides: list[str], run_json: dict | None = None) -> Path:
    """A run dir as pricer.train leaves it, without training: Hydra's config copy, run.json and an adapter
    config (a refusal must come before anything reads the adapter's weights, which are absent)."""
    cfg, _ = compose_train([*DEMO, f"output_root={folder}", *overrides])
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "run.json").write_text(json.dumps(run_json or {"run_name": folder.name, "status": "finished"}))
    return folder


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 as huggingface_hub and datasets read it: once, at their import, which may have come before
    conftest set it (a test module importing them at collection), or a neighbour's fixture may have changed it."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def evaluate_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    return run_cli_in_process(args, monkeypatch, capsys, module="pricer.evaluate")


# -- one line instead of a traceback, before the model loads -----------------------------------------------------


def test_a_train_file_that_is_not_utf8_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """pyarrow reads the bytes of a Latin-1 file through; reading the rows raised UnicodeDecodeError (a traceback)."""
    bad = tmp_path / "train.jsonl"
    rows = [{"text": f"Caf\u00e9 item {i}\n\nPrice is $1.00", "price": 1.0} for i in range(5)]
    bad.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode("latin-1") + b"\n" for r in rows))
    out = run_cli_in_process([*DEMO, f"data.data_files.train={bad}", f"output_root={tmp_path / 'out'}"], monkeypatch, capsys)
    one_error_line(out, f"data.data_files.train={bad} is not UTF-8 text")
    assert "iconv" in out.stderr
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_a_data_file_that_is_a_directory_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """It said "no such file" of a folder that exists."""
    out = run_cli_in_process([*DEMO, f"data.data_files.train={tmp_path}", f"output_root={tmp_path / 'out'}"],
                             monkeypatch, capsys)
    line = one_error_line(out, f"data.data_files.train={tmp_path} is a directory")
    assert "no such file" not in line and "*.jsonl" in line


def test_evaluate_a_run_whose_data_file_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """The saved config names a file that is gone: DataError escaped as a traceback."""
    gone = tmp_path / "moved" / "train.jsonl"
    run = saved_run(tmp_path / "run", ["data=local", f"data.data_files.train={gone}", f"data.data_files.test={SAMPLE_TEST}"])
    before = files_under(tmp_path)
    out = evaluate_in_process([str(run), "--out", str(tmp_path / "eval")], monkeypatch, capsys)
    line = one_error_line(out, f"data.data_files.train={gone}: no such file")
    assert "data.data_files.SPLIT=PATH" in line
    assert files_under(tmp_path) == before


def test_evaluate_a_hub_repo_while_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    """HF_HUB_OFFLINE=1 (conftest sets it): the repo's config was taken as missing, conf/train.yaml composed
    instead, and the default dataset's download failed with a ConnectionError traceback."""
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    out = evaluate_in_process(["someone/pricer-2024"], monkeypatch, capsys)
    one_error_line(out, "someone/pricer-2024: HF_HUB_OFFLINE=1 is set")
    assert "unset HF_HUB_OFFLINE" in out.stderr


def test_train_on_a_hub_dataset_while_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """The same for training: the dataset download's ConnectionError becomes one line naming HF_HUB_OFFLINE."""
    offline(monkeypatch)
    out = run_cli_in_process([*DEMO, "data=pricer", f"output_root={tmp_path}"], monkeypatch, capsys)
    one_error_line(out, "data.path=ed-donner/pricer-data cannot be loaded")
    assert "unset HF_HUB_OFFLINE" in out.stderr


def test_evaluate_out_naming_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """It was refused only after the model load and the scoring (mkdir on a file)."""
    taken = tmp_path / "report.txt"
    taken.write_text("keep me\n")
    run = saved_run(tmp_path / "run", [])
    out = evaluate_in_process([str(run), "--out", str(taken)], monkeypatch, capsys)
    one_error_line(out, f"--out {taken} is a file")
    assert taken.read_text() == "keep me\n"


def test_compare_out_naming_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """It printed the whole table, then failed on the plots with a traceback."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
                                              value=1.0))
    taken = tmp_path / "plots.png"
    taken.write_text("keep me\n")
    out = run_cli_in_process([str(tmp_path), "--out", str(taken)], monkeypatch, capsys, module="pricer.compare")
    one_error_line(out, f"--out {taken} is a file")
    assert out.stdout == ""  # no table first
    assert taken.read_text() == "keep me\n"


def test_evaluate_top_k_that_is_no_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """A saved run config took `evaluation.top_k=abc` as text: a TypeError after the model load."""
    run = saved_run(tmp_path / "run", [])
    out = evaluate_in_process([str(run), "evaluation.top_k=abc", "--out", str(tmp_path / "eval")], monkeypatch, capsys)
    one_error_line(out, "evaluation.top_k='abc' must be an integer")
    assert not (tmp_path / "eval").exists()


def test_evaluate_revision_of_a_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--revision was ignored for a local run dir, but the output was labelled with it."""
    run = saved_run(tmp_path / "run", [])
    monkeypatch.chdir(tmp_path)
    out = evaluate_in_process([str(run), "--revision", "abc123"], monkeypatch, capsys)
    one_error_line(out, "--revision abc123 names a Hub commit")
    assert not (ROOT / "outputs" / "eval" / "run@abc123").exists()


def test_push_of_a_run_json_that_is_not_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    """json.JSONDecodeError escaped as a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"repo_id": "me/pricer-x", "status": ')
    before = files_under(tmp_path)
    out = run_cli_in_process([str(run)], monkeypatch, capsys, module="pricer.push")
    one_error_line(out, f"{run / 'run.json'} is not valid JSON")
    assert files_under(tmp_path) == before


def test_resume_of_a_run_json_without_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """run.json `{}`: KeyError 'run_name' as a traceback, after run.json was rewritten to `running, resumed 1`."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    out = run_cli_in_process([*DEMO, f"resume={run}", f"output_root={tmp_path}"], monkeypatch, capsys)
    one_error_line(out, f"resume={run}")
    assert (run / "run.json").read_text() == "{}"


def tpe_study(folder: Path, distributions: dict) -> str:
    """A finished trial of study `tpe` in sweeps/tpe/optuna.db, as sweep=tpe would have left it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (folder / "sweeps" / "tpe").mkdir(parents=True)
    url = f"sqlite:///{folder / 'sweeps' / 'tpe' / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="tpe")
    params = {name: dist.choices[0] if hasattr(dist, "choices") else dist.low for name, dist in distributions.items()}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=50.0))
    return url


def test_rerun_of_a_study_with_other_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    """sweep=tpe over a study that swept `scheduler` over two choices: Optuna's "CategoricalDistribution does
    not support dynamic value space" as a traceback, and a FAIL trial recorded. Now refused before any trial."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    url = tpe_study(tmp_path, {"scheduler": CategoricalDistribution(["cosine", "linear"])})
    out = run_cli_in_process([*DEMO, "sweep=tpe", f"output_root={tmp_path}", "hydra.sweeper.n_trials=3"], monkeypatch, capsys)
    line = one_error_line(out, "study tpe swept scheduler over choice(cosine, linear), and this command over "
                               "choice(cosine, linear, constant_with_warmup)")
    assert "hydra.sweeper.study_name=tpe-2" in line
    assert len(optuna.load_study(study_name="tpe", storage=url).trials) == 1  # no trial created


def test_a_damaged_study_database_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """A fault inside the file (the trials table's page overwritten) opened, then failed at the first read of the
    trials with a 115-line SQLAlchemy traceback; a truncated file was already refused in one line."""
    import sqlite3

    from optuna.distributions import FloatDistribution

    url = tpe_study(tmp_path, {"lora.lora_dropout": FloatDistribution(0.0, 0.2)})
    db = Path(url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as con:
        page = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'trials'").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(db.read_bytes())
    data[(page - 1) * page_size:(page - 1) * page_size + 12] = b"\xff" * 12  # the page's B-tree header
    db.write_bytes(bytes(data))
    out = run_cli_in_process([*DEMO, "sweep=tpe", f"output_root={tmp_path}", "hydra.sweeper.n_trials=3"], monkeypatch, capsys)
    line = one_error_line(out, f"hydra.sweeper.storage={url}: study tpe cannot be read (database disk image is malformed)")
    assert "hydra.sweeper.study_name" in line
    assert db.read_bytes() == bytes(data)


def test_a_multirun_checks_every_job_before_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Hydra's basic sweeper: job 0 trained in full, then job 1's ConfigError came as a traceback, with no
    summary. Now every job's config is validated first (pricer.job_check): one line naming job 1, no job run.
    (training.max_steps=1 keeps job 0 short where the check is missing.)"""
    out = run_cli_in_process(["--multirun", *DEMO, "training.max_steps=1", "lora.lora_dropout=0.1,abc",
                              f"output_root={tmp_path}"], monkeypatch, capsys)
    one_error_line(out, "job 1 of 2 (")
    assert "lora.lora_dropout='abc' must be a number" in out.stderr and "no job was started" in out.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()


# -- W&B: what wandb.init needs, checked before the model loads -----------------------------------------------------


def test_a_wandb_project_with_a_path_in_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    """`tracking.project=../../evil/x`: wandb.init's UsageError came after the model load."""
    out = run_cli_in_process([*DEMO, "tracking=wandb", "tracking.project=../../evil/x", f"output_root={tmp_path}"],
                             monkeypatch, capsys)
    one_error_line(out, "tracking.project='../../evil/x' holds '/' (W&B project names cannot hold any of")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WANDB_ONLINE = {"WANDB_MODE": "online", "WANDB_SILENT": "true"}


@pytest.mark.slow  # a CLI subprocess: W&B resolves its settings (WANDB_MODE) once per process
@pytest.mark.parametrize(("env", "message"), [
    ({"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567"}, "tracking=wandb cannot reach the W&B server"),
    ({}, "tracking=wandb needs a W&B key for"),
], ids=["unreachable-server", "no-key-no-terminal"])
def test_wandb_online_that_cannot_start_is_refused_before_the_model_loads(tmp_path: Path, env: dict, message: str) -> None:
    """An unreachable server (a CommError after 120 s, after the model load, run left failed) or no key and no
    terminal (UsageError after the load): one line within seconds, before anything loads."""
    home = tmp_path / "home"  # no ~/.netrc, no `wandb login` of the machine running the tests
    home.mkdir()
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pricer.train", *DEMO, "tracking=wandb", f"output_root={tmp_path / 'out'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         env={**os.environ, **WANDB_ONLINE, "HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config"),
                              "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", **env})
    line = one_error_line(out, message)
    assert "WANDB_MODE=offline" in line and "tracking=none" in line
    assert "Loading weights" not in out.stdout + out.stderr
    assert time.monotonic() - started < 60
    assert "0123456789abcdef" not in out.stdout + out.stderr  # the key is never shown
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


# -- errors that name the cause and leave nothing behind ---------------------------------------------------------


def test_hub_push_while_offline_names_hf_hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """It retried the account lookup 5 times (~30 s), then advised hub.hf_user without naming HF_HUB_OFFLINE."""
    offline(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_a_token_that_is_never_used_0123456789")
    started = time.monotonic()
    out = run_cli_in_process([*DEMO, "hub.push=true", f"output_root={tmp_path}"], monkeypatch, capsys)
    line = one_error_line(out, "hub.push=true, but HF_HUB_OFFLINE=1 is set")
    assert "hub.push=false" in line and "hf_a_token" not in out.stdout + out.stderr
    assert time.monotonic() - started < 20


def test_a_group_given_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`lora=r8 lora=r64` trained with r64 without a word, and left a run dir and a name marker."""
    out = run_cli_in_process([*DEMO, "lora=r8", "lora=r64", f"output_root={tmp_path}"], monkeypatch, capsys)
    one_error_line(out, "lora is given twice (lora=r8, lora=r64)")
    assert files_under(tmp_path) == {}, "no run dir, no .run_names marker"


def test_an_unknown_key_leaves_no_name_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """The run dir was dropped, but its `.run_names/NAME` marker stayed, holding the name for no run."""
    out = run_cli_in_process([*DEMO, "+lerning_rate=0.1", f"output_root={tmp_path}"], monkeypatch, capsys)
    one_error_line(out, "lerning_rate is not a known key")
    assert files_under(tmp_path) == {}


@pytest.mark.slow  # a CLI subprocess, signalled
def test_sigterm_before_the_claim_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM a few seconds after start (still importing and validating) killed the process outright: runs/NAME/
    without run.json, and a `.run_names` marker. Now: one line, exit 143, nothing left."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "pricer.train", *DEMO, f"output_root={tmp_path}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any(
            "also sets" in log.read_text() for log in tmp_path.glob("runs/*/train.log")):
        time.sleep(0.05)  # the run logged its first line (the preset notes): it now validates, seconds before its claim
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: interrupted by SIGTERM outside training: its last checkpoint stands, rerun the same command with "
        "resume=auto to continue"]
    assert files_under(tmp_path) == {}, "no run dir, no .run_names marker"


def test_a_signal_a_library_swallows_before_the_claim_still_ends_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The handler raises Interrupted inside whatever runs, and a broad `except Exception` there swallows it:
    in a CI run the signal came while the config was validated (peft's type hints, read under such a handler)
    and the run trained on. Here the signal comes inside exactly such a handler; the run still ends as
    signalled before its claim: one line, exit 143, nothing left."""
    import signal

    import pricer.library_checks

    real_field_types = pricer.library_checks.field_types

    def signalled_and_swallowed(cls: type):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the run's handler raises Interrupted here...
            time.sleep(1)
        except Exception:  # noqa: BLE001 - ...and a library's broad handler swallows it
            pass
        return real_field_types(cls)

    monkeypatch.setattr(pricer.library_checks, "field_types", signalled_and_swallowed)
    out = run_cli_in_process([*DEMO, "training.max_steps=2", f"output_root={tmp_path}"], monkeypatch, capsys)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
        "error: interrupted by SIGTERM outside training: its last checkpoint stands, rerun the same command with "
        "resume=auto to continue"]
    assert files_under(tmp_path) == {}, "no run dir, no .run_names marker"


# -- pushes: a failed final push, and checkpoints an earlier attempt could not push ----------------------------------

HUB_RUN = [*DEMO, "evaluation.test_items=10", "hub.push=true", "hub.push_attempts=1", "hub.push_wait_s=0.05"]


def pricer_push(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pricer.push", str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # trains, and pushes to the Hub stand-in
def test_a_failed_final_push_exits_non_zero_and_pricer_push_finishes_the_run(tmp_path: Path, hub_stand_in) -> None:
    """It exited 0 after "final push failed"; and after `pricer.push` completed the push, run.json still said
    failed or running, so resume=auto would score and push the run again. (403: neither pricer nor
    huggingface_hub retries it, so one fault fails the final commit.)"""
    hub_stand_in.fault_match, hub_stand_in.fail_first_n, hub_stand_in.fail_status = "/commit/", 1, 403
    run_dir = tmp_path / "run"
    out = run_cli([*HUB_RUN, "hub.hub_strategy=end", "training.max_steps=4", "training.save_steps=4",
                   f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"], env={"HF_HUB_OFFLINE": "0"})
    line = one_error_line(out, "the final push to pricer-tester/pricer-", code=1)
    assert f"finish it with `python -m pricer.push {run_dir}`" in line
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists(), "the run's files are kept"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    push = pricer_push(run_dir)
    assert push.returncode == 0, push.stderr[-2000:]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["final_pushed"] is True and meta["status"] == "finished"  # resume=auto leaves it alone
    (repo_id,) = hub_stand_in.repos
    assert hub_stand_in.files(repo_id)["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.mark.slow  # trains twice, signalled, pushing to the Hub stand-in
def test_a_resumed_run_pushes_the_checkpoints_an_earlier_attempt_could_not(tmp_path: Path, hub_stand_in) -> None:
    """checkpoint-8's push fails (403, one attempt), the run is stopped by SIGTERM, then resumed with the Hub back:
    the resumed run never queued checkpoint-8 again (and rotation kept it forever, unpushed)."""
    import signal

    hub_stand_in.fault_match, hub_stand_in.fail_first_n, hub_stand_in.fail_status = "/commit/", 1, 403
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pricer.train", *HUB_RUN, "training.max_steps=400", "training.save_steps=8",
                              "training.save_total_limit=1", f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while hub_stand_in.fail_first_n and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)  # until checkpoint-8's push has failed
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 143, stderr[-3000:]
    assert 8 not in json.loads((run_dir / "pushed.json").read_text())
    last = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    resumed = run_cli([*HUB_RUN, f"training.max_steps={last + 2}", "training.save_steps=8", "training.save_total_limit=1",
                       f"resume={run_dir}", f"output_root={tmp_path}"], env={"HF_HUB_OFFLINE": "0"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 8 in json.loads((run_dir / "pushed.json").read_text())
    (repo_id,) = hub_stand_in.repos
    assert "Training in progress, step 8" in [c.message for c in hub_stand_in.commits(repo_id)]
    assert not (run_dir / "checkpoints" / "checkpoint-8").exists(), "pushed, so rotation removed it"


def test_pricer_push_that_completes_a_killed_final_push_records_the_run_finished(tmp_path: Path, hub_stand_in,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    """A run killed during its final push (SIGKILL: run.json still `running`, its pid gone): `pricer.push` pushed the
    adapter, but run.json kept `running`, so resume=auto took the run up again, scored it and pushed it again."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = saved_run(tmp_path / "run", ["hub.push=true"], {
        "run_name": "2024-09-13_13.04.39", "project_run_name": "pricer-2024-09-13_13.04.39", "status": "running",
        "repo_id": "pricer-tester/pricer-2024-09-13_13.04.39", "private": True, "overrides": [], "pid": dead.pid,
        "host": socket.gethostname(), "trained": {"train_steps": 4}})
    card = b"---\nlibrary_name: peft\n---\n# card\n"
    for name, content in (("adapter_model.safetensors", b"weights"), ("README.md", card), ("metrics.json", b"{}")):
        (run / "adapter" / name).write_bytes(content)
    out = run_cli_in_process([str(run)], monkeypatch, capsys, module="pricer.push")
    assert out.returncode == 0, out.stderr[-2000:]
    meta = json.loads((run / "run.json").read_text())
    assert meta["final_pushed"] is True and meta["status"] == "finished"
    assert hub_stand_in.files("pricer-tester/pricer-2024-09-13_13.04.39")["adapter_model.safetensors"] == b"weights"


def test_sigterm_during_the_hub_account_lookup_is_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal while the run asks the Hub for the token's account ended as "the Hub refused the token in HF_TOKEN
    (Interrupted)", a bad-input exit: the lookup's error handling took the signal for the Hub's answer. Here the
    real lookup waits on a Hub that accepts and never answers, and pricer.train's own handler (RaiseOnSignal, as
    main() installs it before the claim) gets a real SIGTERM."""
    import signal
    import socket
    import threading

    from huggingface_hub import constants, hf_api

    from pricer.hub import checked_account
    from pricer.interrupt import Interrupted, RaiseOnSignal

    server = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []
    held: list[socket.socket] = []

    def accept() -> None:  # reads each request, answers none
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            seen.append(connection.recv(4096).decode(errors="replace").split("\r\n")[0])
            if "/api/whoami" in seen[-1]:
                os.kill(os.getpid(), signal.SIGTERM)

    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("HF_TOKEN", "hf_a_token_for_a_silent_hub_0123456789")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    threading.Thread(target=accept, daemon=True).start()
    try:
        with pytest.raises(Interrupted) as stopped, RaiseOnSignal():
            checked_account(None, attempts=3, wait_s=0.0)
    finally:
        server.close()
        for connection in held:
            connection.close()
    assert stopped.value.signum == signal.SIGTERM
    assert sum("/api/whoami" in line for line in seen) == 1, "a signal is not retried either"
