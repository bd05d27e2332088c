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
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
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
    """The run record (id, name, group, job_type, tags, config) and the final summary of one offline run."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(path)
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
