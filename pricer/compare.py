"""Compare the trials of a sweep: python -m pricer.compare SWEEP_DIR_OR_STORAGE_URL [--study NAME] [--json [FILE]]

Prints every trial (params, objective, state, duration, Hub repo, W&B run, why it
failed or where it was pruned) best first, and saves plots as PNG next to the study:
optimisation history, parallel coordinates, parameter importance, and the objective
against its test score. The best trials are then linked: trial -> run dir, W&B run, Hub
repo. `--json` writes those links (and every trial's) for scripts instead. The same
study opens live in `optuna-dashboard URL`; its axes carry the objectives' names
(the sweeper names them with Optuna's set_metric_names).
"""

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from pricer.logs import masked_url
from pricer.objectives import REPORTED_SCORES

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
# the FrozenTrial attributes the table reads through study.trials_dataframe
TRIAL_ATTRS = ("number", "state", "value", "duration", "params", "user_attrs", "last_step")
RUN_ATTRS = ("hub_repo", "wandb_run")  # written by the job through pricer.trial.set_trial_attrs
BEST_LINKED = 3  # one objective: the best three finished trials are linked; several: the Pareto front
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pricer.compare", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a sweep dir (holding optuna.db) or a storage URL")
    parser.add_argument("--study", help="study name; needed when the storage holds several")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: next to the study)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the study's trials and their links (run dir, W&B run, Hub repo) as JSON, "
                             "to stdout or to FILE (a new file), instead of the table and plots")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.out.is_dir():  # before the table, not after it
        print(f"error: --out {args.out} is a file: name a folder for the plots (it is made if missing)", file=sys.stderr)
        return 2
    if args.json not in (None, "-") and Path(args.json).exists():  # never overwrite what a script wrote before
        print(f"error: --json {args.json} exists: name a new file, or pass --json alone for stdout", file=sys.stderr)
        return 2
    try:
        url, out_dir = locate(args.target)
        study = load_study(url, args.study)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json is not None:
        text = json.dumps(study_links(study, url), indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            print(f"wrote {args.json}")
        return 0
    print(format_table(trial_rows(study)))
    for line in save_plots(study, args.out or out_dir):
        print(line)
    for line in format_links(best_trials(study), objective_names(study)):
        print(line)
    print(f"live view: optuna-dashboard {url}")
    return 0


def locate(target: str) -> tuple[str, Path]:
    """The storage URL, and the folder the plots go to (the SQLite file's, else here)."""
    if "://" in target:
        db = _sqlite_file(target)
        if db is not None:
            _check_sqlite_file(db, target)
        return target, db.parent if db is not None else Path.cwd()
    path = Path(target)
    db = path / "optuna.db" if path.is_dir() else path
    if not db.is_file():
        raise ValueError(f"{target}: no optuna.db there; pass the sweep dir or a storage URL")
    _check_sqlite_file(db, target)
    return f"sqlite:///{db.resolve()}", db.resolve().parent


def _sqlite_file(url: str) -> Path | None:
    """The file of an sqlite:/// URL; None for other databases (and SQLite in memory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{masked_url(url)} is not a storage URL: use e.g. sqlite:////abs/path/optuna.db") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_sqlite_file(db: Path, target: str) -> None:
    """SQLite creates a missing file (a typo would leave an empty database behind) and opens any
    file until the first query fails: refuse both here, before SQLite sees the path."""
    if not db.is_file():
        raise ValueError(f"{target}: no such file {db}: check the path (an absolute one takes four slashes, "
                         "sqlite:////abs/optuna.db), or pass the sweep dir")
    with open(db, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise ValueError(f"{target}: {db} is not an SQLite database: pass the sweep dir, its optuna.db or a storage URL")


def _open_storage(url: str):
    """The study storage; an unreachable or unknown database is one line, after 10 s at most."""
    import optuna
    import sqlalchemy

    try:
        # psycopg2 waits as long as the OS does (minutes for a host that drops packets)
        timeout = sqlalchemy.engine.make_url(url).get_driver_name() == "psycopg2"
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"connect_timeout": 10}} if timeout else None)
    except (sqlalchemy.exc.DatabaseError, sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as err:
        first = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ValueError(f"{masked_url(url)}: cannot open the database ({first}): check the URL and that the server runs") from None
    except ImportError as err:  # Optuna's word for a missing driver (psycopg2, MySQLdb, ...)
        raise ValueError(f"{masked_url(url)}: {err.__cause__ or err}: install the database's Python driver") from None


def load_study(url: str, name: str | None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _open_storage(url)
    names = optuna.get_all_study_names(storage)
    if name is None and len(names) != 1:
        raise ValueError(f"pick a study with --study: {', '.join(names) or 'none in this storage'}")
    if (name or names[0]) not in names:
        raise ValueError(f"no study {name!r}; studies: {', '.join(names)}")
    return optuna.load_study(study_name=name or names[0], storage=storage)


def objective_names(study) -> list[str]:
    """The objectives' names as the sweeper set them (set_metric_names); Optuna's own labels otherwise."""
    if study.metric_names:
        return list(study.metric_names)
    return ["objective"] if len(study.directions) == 1 else [f"objective {i}" for i in range(len(study.directions))]


def best_trials(study) -> list:
    """One objective: the BEST_LINKED best finished trials, best first; several: the Pareto front (Optuna's best_trials)."""
    from optuna.trial import TrialState

    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    sign = -1 if study.directions[0].name == "MAXIMIZE" else 1
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (sign * t.value, t.number))[:BEST_LINKED]


def trial_links(trial, names: list[str]) -> dict[str, Any]:
    """Where a trial's run lives: its run dir, W&B run and Hub repo, as its job recorded them on the trial
    (pricer.train and pricer.tracking through pricer.trial.set_trial_attrs). A run tracked with tracking=none
    has no W&B run (no wandb_id); a run with hub.push=false no Hub repo."""
    from pricer.trial import RUN_DIR

    attrs = trial.user_attrs
    wandb = None
    if attrs.get("wandb_id"):
        wandb = {"name": attrs.get("wandb_run"), "id": attrs["wandb_id"], "project": attrs.get("wandb_project"),
                 "url": attrs.get("wandb_url")}
    return {"number": trial.number, "state": trial.state.name,
            "values": dict(zip(names, trial.values, strict=True)) if trial.values else None,
            "scores": {name: attrs[name] for name in REPORTED_SCORES if attrs.get(name) is not None},
            "params": dict(trial.params), "run_dir": attrs.get(RUN_DIR), "wandb": wandb, "hub_repo": attrs.get("hub_repo")}


def study_links(study, url: str) -> dict[str, Any]:
    """What --json writes: the study, its named objectives, the best trials' links, then every trial's."""
    names = objective_names(study)
    return {"study": study.study_name, "storage": masked_url(url),
            "objectives": [{"name": name, "direction": d.name.lower()} for name, d in zip(names, study.directions, strict=True)],
            "best": [trial_links(t, names) for t in best_trials(study)],
            "trials": [trial_links(t, names) for t in study.get_trials(deepcopy=False)]}


def format_links(trials: list, names: list[str]) -> list[str]:
    """The best trials, each with its run dir, W&B run and Hub repo, one per line."""
    if not trials:
        return []
    lines = ["best trials -> run dir, W&B run, Hub repo:"]
    for trial in trials:
        link = trial_links(trial, names)
        scored = [f"{k}={v:.4g}" for k, v in (link["values"] or {}).items()]
        scored += [f"{k}={v:.4g}" for k, v in link["scores"].items() if k not in (link["values"] or {})]
        lines += [f"  trial {trial.number}: {', '.join(scored)}",
                  f"    run dir  {link['run_dir'] or '-'}",
                  f"    W&B      {_wandb_cell(link['wandb'])}",
                  f"    Hub      {link['hub_repo'] or '-'}"]
    return lines


def _wandb_cell(wandb: dict[str, Any] | None) -> str:
    if wandb is None:
        return "- (not tracked)"
    where = f"project {wandb['project']}, id {wandb['id']}" if wandb["project"] else f"id {wandb['id']}"
    return f"{wandb['name']} ({where})" + (f" {wandb['url']}" if wandb["url"] else "")


def trial_rows(study) -> list[dict[str, Any]]:
    """One dict per trial, best first: finished trials by objective, then pruned, then the rest.

    From Optuna's own `trials_dataframe` (one column per param, user attr and objective), so a new
    param or attribute shows up without code here; only the cells are pricer's."""
    import pandas as pd

    frame = study.trials_dataframe(attrs=TRIAL_ATTRS, multi_index=True)
    if frame.empty:
        return []
    frame = frame.astype(object).where(frame.notna(), None)  # NaN/NaT of a missing cell: None
    sign = -1 if study.directions[0].name == "MAXIMIZE" else 1
    objectives = frame["values"] if "values" in frame.columns.get_level_values(0) else frame[["value"]]
    first = pd.to_numeric(objectives.iloc[:, 0], errors="coerce").fillna(float("inf") * sign)
    order = pd.DataFrame({"state": frame[("state", "")].map(lambda s: STATE_ORDER.get(s, 5)),
                          "key": first * sign, "number": frame[("number", "")]})
    rows = [_row(frame.loc[i], objectives.loc[i]) for i in order.sort_values(["state", "key", "number"]).index]
    return rows


def _row(trial, objectives) -> dict[str, Any]:
    """A row of trials_dataframe(multi_index=True) as the table's cells."""
    from pricer.trial import PRUNED_AT

    attrs = _group(trial, "user_attrs")
    values = [v for v in objectives if v is not None]
    state = trial[("state", "")]
    note = attrs.get("fail_reason") or ""
    if state == "PRUNED":
        at = attrs.get(PRUNED_AT, trial[("last_step", "")])
        note = f"pruned at step {int(at) if at is not None else '?'}"
    elif state == "FAIL" and not note:
        note = "interrupted (re-queued)"
    row: dict[str, Any] = {"#": int(trial[("number", "")]), "state": state,
                           "objective": ", ".join(f"{v:.4g}" for v in values),
                           "duration": _duration(trial[("duration", "")])}
    row.update({name: _short(value) for name, value in _group(trial, "params").items() if value is not None})
    row.update({name: _short(attrs[name]) for name in REPORTED_SCORES if attrs.get(name) is not None})
    row.update({name: attrs[name] for name in RUN_ATTRS if attrs.get(name)})
    row["note"] = str(note)[:60]
    return row


def _group(trial, attr: str) -> dict[str, Any]:
    """The `attr` columns of one trials_dataframe row (params, user_attrs), by their second name."""
    if attr not in trial.index.get_level_values(0):
        return {}
    return {name: value for (group, name), value in trial.items() if group == attr}


def _duration(delta) -> str:
    if delta is None or delta != delta:  # NaT too
        return ""
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds) // 60
    return f"{minutes}m{int(seconds) % 60:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain fixed-width table; columns appear when any trial has them."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not c.startswith("_")]
    columns = [c for c in columns if c != "note"] + ["note"]  # the long one last
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def save_plots(study, out_dir: Path) -> list[str]:
    """history / parallel / importance PNGs; a plot the study cannot make yet is skipped, not fatal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # target below is lower-better
    name = objective_names(study)[0]  # the axes say val/price_error, not "Objective Value"
    target, lower_is_better = {"target_name": name}, {}
    if len(study.directions) > 1:  # the plots show the first objective
        target = {"target": lambda t: t.values[0], "target_name": name}
        sign = -1 if study.directions[0].name == "MAXIMIZE" else 1  # PED-ANOVA ranks low targets
        lower_is_better = {"target": lambda t: sign * t.values[0], "target_name": name}
    # PED-ANOVA: needs no scikit-learn (fANOVA, the default, does) and copes with few trials
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    makers = {
        "history": lambda: plots.plot_optimization_history(study, **target),
        "parallel": lambda: plots.plot_parallel_coordinate(study, **target),
        "importance": lambda: plots.plot_param_importances(study, evaluator=evaluator, **lower_is_better),
    }
    twin = _test_twin(study, name)
    if twin is not None:  # the objective beside the test score it stands for: Optuna's Pareto plot with two targets
        def vs_test():
            axes = plots.plot_pareto_front(study, targets=lambda t: (t.values[0], t.user_attrs[twin]), target_names=[name, twin])
            axes.set_title(f"{name} (selected on) against {twin} (the report)")
            return axes

        makers["vs-test"] = vs_test
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for kind, make in makers.items():
        path = out_dir / f"{study.study_name}-{kind}.png"
        try:
            axes = make()
        except Exception as err:  # noqa: BLE001 - e.g. too few complete trials for this plot
            lines.append(f"skipped {kind} plot: {err}")
            continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        lines.append(f"plot: {path}")
    return lines


def _test_twin(study, name: str) -> str | None:
    """`test/price_error` for a study selecting on `val/price_error`, when every finished trial recorded it
    (pricer.train does, as a user attr); None otherwise (another objective, another app, no finished trial)."""
    from optuna.trial import TrialState

    if len(study.directions) != 1 or not name.startswith("val/"):
        return None
    twin = "test/" + name[len("val/"):]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return twin if done and all(isinstance(t.user_attrs.get(twin), (int, float)) for t in done) else None


if __name__ == "__main__":
    sys.exit(main())
