"""Run names: the notebook's timestamp format, distinct within one second, valid repo ids."""

import re
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from pricer.run_names import claim_run_name, hub_repo_id, is_valid_repo_name, project_run_name

START = datetime(2024, 9, 13, 13, 4, 39)


def test_name_follows_the_notebook_format(tmp_path: Path) -> None:
    name = claim_run_name(START, tmp_path)
    assert name == "2024-09-13_13.04.39"
    assert project_run_name("pricer", name) == "pricer-2024-09-13_13.04.39"
    assert hub_repo_id("ed", "pricer", name) == "ed/pricer-2024-09-13_13.04.39"


def _claim(registry: str) -> str:
    return claim_run_name(START, Path(registry))


def test_same_second_runs_get_distinct_valid_names(tmp_path: Path) -> None:
    """Eight processes racing for one timestamp: eight names, each a valid Hub repo name."""
    with ProcessPoolExecutor(4) as pool:
        names = list(pool.map(_claim, [str(tmp_path)] * 8))
    assert len(set(names)) == 8
    assert "2024-09-13_13.04.39" in names
    for name in names:
        assert re.fullmatch(r"2024-09-13_13\.04\.39(_\d+)?", name)
        assert is_valid_repo_name(project_run_name("pricer", name))


def test_repo_name_rules() -> None:
    assert is_valid_repo_name("pricer-2024-09-13_13.04.39")
    for bad in ["-pricer", "pricer.", "pri--cer", "pri..cer", "pri cer", "p" * 97, ""]:
        assert not is_valid_repo_name(bad), bad
