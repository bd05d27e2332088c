"""python -m pricer.compare: the trials table, best first, and the three PNG plots."""

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from pricer import compare

SPACE = {"lr": FloatDistribution(1e-5, 1e-3, log=True), "scheduler": CategoricalDistribution(["cosine", "linear"])}


def _add(study: optuna.Study, lr: float, state: TrialState = TrialState.COMPLETE, value: float | None = None,
         **attrs) -> None:
    intermediate = {0: 2.0, 50: value} if value is not None else {0: 2.0}
    study.add_trial(create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                                 params={"lr": lr, "scheduler": "cosine" if lr < 1e-4 else "linear"},
                                 distributions=SPACE, user_attrs=attrs, intermediate_values=intermediate))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    study = optuna.create_study(study_name="tpe", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    _add(study, 1e-4, value=0.9, hub_repo="me/pricer-2024-09-13_13.04.39", wandb_run="pricer-2024-09-13_13.04.39")
    _add(study, 3e-4, value=0.7)
    _add(study, 2e-5, value=1.4)
    _add(study, 5e-5, TrialState.PRUNED, value=1.8, pruned_at_step=50)
    _add(study, 9e-4, TrialState.FAIL, fail_reason="out of memory (OutOfMemoryError: CUDA out of memory)")
    _add(study, 2e-4, TrialState.FAIL)  # no reason: the sweep was killed while it ran
    return tmp_path


def test_table_lists_trials_best_first_and_plots_are_saved(sweep_dir: Path, capsys) -> None:
    assert compare.main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    table = out.split("\nplot")[0].splitlines()
    assert table[0].split()[:6] == ["#", "state", "objective", "duration", "lr", "scheduler"]
    assert [line.split()[0] for line in table[1:]] == ["1", "0", "2", "3", "4", "5"]  # by objective, then state
    assert "me/pricer-2024-09-13_13.04.39" in table[2] and "pricer-2024-09-13_13.04.39" in table[2]
    assert "pruned at step 50" in table[4]
    assert "out of memory" in table[5] and "interrupted" in table[6]
    for kind in ("history", "parallel", "importance"):
        png = sweep_dir / f"tpe-{kind}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", kind
    assert f"optuna-dashboard sqlite:///{sweep_dir / 'optuna.db'}" in out


def test_storage_url_and_study_choice(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    optuna.create_study(study_name="other", storage=url)
    assert compare.main([url]) == 2  # two studies: which one?
    assert "pick a study with --study: " in capsys.readouterr().err
    assert compare.main([url, "--study", "tpe", "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "tpe-history.png").exists()
    assert compare.main([str(tmp_path / "nowhere")]) == 2


def test_maximised_and_multi_objective_studies(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="acc", storage=url, direction="maximize")
    for lr, value in [(1e-4, 0.5), (3e-4, 0.8), (2e-5, 0.1)]:
        _add(study, lr, value=value)
    rows = compare.trial_rows(study)
    assert [row["#"] for row in rows] == [1, 0, 2]
    multi = optuna.create_study(study_name="multi", storage=url, directions=["minimize", "minimize"])
    for lr in (1e-4, 3e-4, 2e-5):
        multi.add_trial(create_trial(values=[lr * 1e4, 1 / lr], params={"lr": lr}, distributions={"lr": SPACE["lr"]}))
    rows = compare.trial_rows(multi)  # ranked on the first objective; the cell shows both
    assert [(row["#"], row["objective"]) for row in rows] == [(2, "0.2, 5e+04"), (0, "1, 1e+04"), (1, "3, 3333")]
    capsys.readouterr()
    assert compare.main([url, "--study", "multi"]) == 0
    out = capsys.readouterr().out
    for kind in ("history", "parallel", "importance"):  # each on the first objective
        png = tmp_path / f"multi-{kind}.png"
        assert f"plot: {png}" in out and png.read_bytes()[:4] == b"\x89PNG", kind
