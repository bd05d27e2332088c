"""Comparing runs where users look: a 2-trial sweep of the tiny model, then what each tool shows.

- Optuna (and so optuna-dashboard): the study names its objective, `val/price_error`;
- W&B (offline files, read as W&B's own protobuf records): each trial's run has job_type `trial`, the
  presets as tags, and its trial's number, study and storage in its config; a single run has job_type
  `train`; the sweep ends with one run of job_type `sweep` in the group, naming the best trial;
- a trial, its run dir, its W&B run and its Hub repo point at each other, and `pricer.compare --json`
  writes the four for the best trials.
"""

import json
import struct
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

from pricer import compare

SWEEP = [
    "experiment=demo",
    "sweep=demo",
    "hydra.sweeper.n_trials=2",
    "training.max_steps=4",
    "training.logging_steps=2",
    "evaluation.val_items=16",
    "evaluation.test_items=16",
    "tracking=wandb",
    "hub.push=true",
]
# a .wandb file: W&B's leveldb-style log (a 7-byte file header, 32 KiB blocks of records, each record a 7-byte
# header (crc32, length, type) and a slice of one serialized wandb_internal_pb2.Record)
BLOCK, HEADER, FULL, FIRST, LAST = 32768, 7, 1, 2, 4


def wandb_records(path: Path) -> list:
    """Every Record in a .wandb file, decoded with W&B's own protobuf classes."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    records, pos, pieces = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pieces += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
        elif kind == 0 and length == 0:  # the zero fill at the end of a block
            pieces = b""
    return records


def wandb_run(run_dir: Path) -> dict:
    """The run record (id, name, group, job_type, tags, config) and the final summary of one offline run.

    W&B's own process (wandb-core) writes the file through a buffer: wandb.finish() in this process can
    return before the last of it reaches the disk (seen once under a loaded suite: no record yet), so the
    file is read again until it holds the run record and the exit record, for up to 30 s."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30
    while True:
        try:
            records = wandb_records(path)
        except DecodeError:  # a record cut off where the writer's buffer ended
            records = []
        kinds = {r.WhichOneof("record_type") for r in records}
        if {"run", "exit"} <= kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    summary: dict = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary |= {u.key: json.loads(u.value_json) for u in record.summary.update if u.key}
    return {"id": run.run_id, "name": run.display_name, "group": run.run_group, "job_type": run.job_type,
            "tags": list(run.tags), "config": {u.key: json.loads(u.value_json) for u in run.config.update},
            "summary": summary}


@pytest.mark.slow  # a 2-trial sweep and a single run, each a CLI subprocess that trains
def test_a_trial_its_run_dir_wandb_run_and_hub_repo_point_at_each_other(tmp_path: Path, tiny_model_dir, hub_stand_in,
                                                                         capsys) -> None:
    out = run_cli([*SWEEP, f"output_root={tmp_path}"], env={"HF_HUB_OFFLINE": "0"})
    assert out.returncode == 0, out.stderr[-4000:]
    sweep_dir = tmp_path / "sweeps" / "demo"
    url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="demo", storage=url)
    assert study.metric_names == ["val/price_error"], "optuna-dashboard would label the axis 'Objective 0'"
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]

    for trial in trials:  # trial -> run dir, W&B run, Hub repo; and each of them back to the trial
        run_dir = Path(trial.user_attrs["run_dir"])
        meta = json.loads((run_dir / "run.json").read_text())
        run = wandb_run(run_dir)
        assert trial.user_attrs["wandb_id"] == run["id"] == meta["wandb_id"]
        assert trial.user_attrs["wandb_run"] == run["name"] == meta["project_run_name"]
        assert trial.user_attrs["hub_repo"] == run["config"]["hub_repo"] == meta["repo_id"]
        assert trial.user_attrs["hub_repo"] in hub_stand_in.repos
        assert run["job_type"] == "trial" and run["group"] == "sweep-demo"
        assert {"model=tiny", "hardware=cpu", "sweep=demo", f"lora={trial.params['lora']}",
                f"scheduler={trial.params['scheduler']}"} <= set(run["tags"])
        assert run["config"]["trial"] | {"params": None} == {"number": trial.number, "study_name": "demo",
                                                           "storage": url, "params": None}
        assert run["config"]["run_dir"] == str(run_dir)

    summary_run = wandb_run(sweep_dir)  # the sweep process's own run, in the trials' group
    best = study.best_trial
    assert summary_run["job_type"] == "sweep" and summary_run["group"] == "sweep-demo"
    assert summary_run["config"]["objectives"] == ["val/price_error"] and summary_run["config"]["storage"] == url
    summary = summary_run["summary"]
    assert summary["best_trial"] == best.number
    assert summary["best/val/price_error"] == pytest.approx(best.value)
    assert summary["best/test/price_error"] == pytest.approx(best.user_attrs["test/price_error"])
    assert summary["best_run_name"] == best.user_attrs["wandb_run"] and summary["best_hub_repo"] == best.user_attrs["hub_repo"]
    assert summary["best_wandb_id"] == best.user_attrs["wandb_id"] and summary["best_run_dir"] == best.user_attrs["run_dir"]
    assert not {f"lora={c}" for c in ("r16", "r32", "r64")} & set(summary_run["tags"]), "a swept group is no preset of the sweep"

    links = tmp_path / "links.json"
    assert compare.main([str(sweep_dir), "--json", str(links)]) == 0
    written = json.loads(links.read_text())
    assert written["objectives"] == [{"name": "val/price_error", "direction": "minimize"}]
    assert [b["number"] for b in written["best"]] == sorted([t.number for t in trials], key=lambda n: trials[n].value)
    top = written["best"][0]
    assert top["values"] == {"val/price_error": pytest.approx(best.value)}
    assert top["run_dir"] == best.user_attrs["run_dir"] and top["hub_repo"] == best.user_attrs["hub_repo"]
    assert top["wandb"] | {"url": None} == {"name": best.user_attrs["wandb_run"], "id": best.user_attrs["wandb_id"],
                                           "project": "pricer", "url": None}
    before = links.read_text()
    capsys.readouterr()
    assert compare.main([str(sweep_dir), "--json", str(links)]) == 2  # a script's earlier output is never overwritten
    assert f"--json {links} exists" in capsys.readouterr().err and links.read_text() == before
    assert compare.main([str(sweep_dir), "--json"]) == 0  # stdout: the same JSON, nothing else
    assert json.loads(capsys.readouterr().out)["best"] == written["best"]

    assert compare.main([str(sweep_dir)]) == 0  # the table's closing lines: the best trials' four links
    printed = capsys.readouterr().out
    assert f"  trial {best.number}: val/price_error=" in printed
    assert f"run dir  {best.user_attrs['run_dir']}" in printed and f"Hub      {best.user_attrs['hub_repo']}" in printed
    assert f"W&B      {best.user_attrs['wandb_run']} (project pricer, id {best.user_attrs['wandb_id']})" in printed
    assert (sweep_dir / "demo-vs-test.png").read_bytes()[:4] == b"\x89PNG"  # val/price_error against test/price_error

    single = run_cli(["experiment=demo", "training.max_steps=2", "training.logging_steps=1", "evaluation.test_items=8",
                      "tracking=wandb", "lora=r8", f"output_root={tmp_path / 'single'}"])
    assert single.returncode == 0, single.stderr[-4000:]
    (run_dir,) = [p.parent for p in (tmp_path / "single" / "runs").glob("*/run.json")]
    run = wandb_run(run_dir)
    assert run["job_type"] == "train" and run["config"]["trial"] is None and not run["group"]
    assert {"experiment=demo", "lora=r8", "hardware=cpu", "model=tiny"} <= set(run["tags"])


MULTI_APP = '''
import hydra


@hydra.main(version_base="1.3", config_path=".", config_name="multi")
def main(cfg):
    return [(cfg.x - 0.3) ** 2, cfg.x]  # an error to minimise, a score to maximise


if __name__ == "__main__":
    main()
'''
MULTI_CONFIG = """
defaults:
  - override hydra/sweeper: pricer_optuna
  - _self_

x: 0.0
optimized_metric: [val/error, val/score]

hydra:
  mode: MULTIRUN
  sweep:
    dir: sweep
  sweeper:
    study_name: multi
    direction: [minimize, maximize]
    n_trials: 3
    params:
      x: interval(0.0, 1.0)
"""


@pytest.mark.slow  # a sweep of another Hydra app, as a CLI subprocess
def test_a_multi_objective_study_names_each_objective(tmp_path: Path, capsys) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "multi.py").write_text(MULTI_APP)
    (tmp_path / "multi.yaml").write_text(MULTI_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICER_OPTUNA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "multi.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert optuna.load_study(study_name="multi", storage=url).metric_names == ["val/error", "val/score"]
    capsys.readouterr()
    assert compare.main([url, "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["objectives"] == [{"name": "val/error", "direction": "minimize"}, {"name": "val/score", "direction": "maximize"}]
    assert written["best"] and all(set(b["values"]) == {"val/error", "val/score"} for b in written["best"])  # the Pareto front


def test_a_study_that_optimises_another_metric_is_refused(tmp_path: Path) -> None:
    """Rerunning a sweep on a study whose results measured another objective would plot two metrics on one axis."""
    from hydra_plugins.pricer_optuna_sweeper import _study
    from hydra_plugins.pricer_optuna_sweeper._space import SweepConfigError

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = _study.open_study(url, "s", ["minimize"], 60, None, ["val/rmsle"])
    assert study.metric_names == ["val/rmsle"]
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert _study.open_study(url, "s", ["minimize"], 60, None, ["val/rmsle"]).metric_names == ["val/rmsle"]
    with pytest.raises(SweepConfigError, match=r"study s in sqlite:///.* optimises val/rmsle, this sweep val/price_error: "
                                               r"set hydra.sweeper.study_name to a new name, or optimized_metric=val/rmsle"):
        _study.open_study(url, "s", ["minimize"], 60, None, ["val/price_error"])


@pytest.mark.slow  # wandb.init starts W&B's local service process
def test_a_trials_wandb_config_names_its_storage_without_the_password(tmp_path: Path) -> None:
    import wandb

    from pricer import tracking

    linked: dict = {}
    assert tracking.start("wandb", "pricer-test", "pricer-x", "sweep-x", {"trial": {"number": 4, "study_name": "tpe"}},
                          str(tmp_path), "trialrun4", tags=["lora=r8"], job_type="trial", link=linked.update,
                          storage="postgresql+psycopg2://sweeper:s3cret-pw@dbhost:5432/pricer") == ["wandb"]
    tracking.finish("wandb", "finished")
    wandb.teardown()  # W&B's service process may still be writing the run's file when finish returns: stop it
    run = wandb_run(tmp_path)
    assert run["job_type"] == "trial" and run["tags"] == ["lora=r8"]
    assert run["config"]["trial"] == {"number": 4, "study_name": "tpe", "storage": "postgresql+psycopg2://sweeper:***@dbhost:5432/pricer"}
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"s3cret-pw" in p.read_bytes()]
    assert linked == {"wandb_id": "trialrun4", "wandb_project": "pricer-test"}  # offline: no URL
