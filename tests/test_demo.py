"""The embedded default shows learning: `python -m pricer.train experiment=demo` as a newcomer runs it,
to the end, with the result README.md quotes."""

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from pricer.metrics import summary_line

# README.md: "The demo ends `test Error=$20.89 RMSLE=0.14 Hits=94.4%` against the baseline's `$149.80 ... 18.0%`"
README_QUOTE = re.compile(r"The demo\s+ends `test (Error=\S+ RMSLE=\S+ Hits=\S+)` against the baseline's `(\$\S+) \.\.\. (\S+%)`")


def readme_demo_result() -> tuple[str, str, str]:
    """The test line, the baseline's error and its hit rate, as README.md quotes them."""
    found = README_QUOTE.search((ROOT / "README.md").read_text())
    assert found, "README.md no longer quotes the demo's result in the form this test reads"
    return found.groups()


@pytest.mark.slow
def test_demo_ends_with_the_result_readme_quotes(tmp_path: Path) -> None:
    """The whole demo (750 steps, seeded, on the CPU) ends with the course's tester at the numbers README.md
    quotes, test and constant-mean baseline, to the printed digit; the output ends in a plain summary and
    carries no warning (each known-harmless one is silenced at its source, pricer.logs)."""
    quoted_test, quoted_baseline_error, quoted_baseline_hits = readme_demo_result()
    run_dir = tmp_path / "run"
    out = run_cli(["experiment=demo", f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"], env={"WANDB_MODE": ""},
                  timeout=1200)  # ~3 min on 2 idle cores
    assert out.returncode == 0, out.stderr[-3000:]

    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert (metrics["test/items"], metrics["train_steps"]) == (250, 750)
    test = summary_line({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")})
    baseline = summary_line({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("baseline/")})
    assert test == quoted_test, f"README.md quotes test {quoted_test}; this run: {test}"
    assert baseline.startswith(f"Error={quoted_baseline_error} ") and baseline.endswith(f"Hits={quoted_baseline_hits}"), baseline

    output = out.stdout + out.stderr
    assert not [line for line in output.splitlines() if re.search(r"warn", line, re.IGNORECASE)], output[-3000:]
    assert f"test     {test}" in output and f"baseline {baseline}" in output
    summary = output[output.index("trained a LoRA adapter"):]
    assert "750 steps" in summary and "better than the baseline" in summary
    assert str(run_dir / "adapter" / "price_chart.png") in summary and "next: " in summary

