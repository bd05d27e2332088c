"""The benchmarks' pipelines on tiny models and recorded runs: the GPU runs are too dear to find their bugs."""

import importlib.util
import json
import re
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains: 8 configurations of a tiny Llama, each in its own process
def test_train_throughput_tiny_writes_both_rates_and_keeps_the_loss(tmp_path: Path) -> None:
    """The recipe and the batch-16 changes, each step timed; every change keeps the fixed batch's loss
    (fp32 on the CPU, where dropping the padding mask must be exact), and each row's "x recipe" columns are
    its measured rates over the recipe's."""
    markdown = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "bench/train_throughput.py", "--tiny", "--only", "recipe", "b16", "--warmup", "1", "--steps", "3",
         "--cap-s", "500",  # the default 150 s cap per configuration is for the GPU; a loaded 2-core host needs more
         "--out", str(tmp_path), "--markdown", str(markdown)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "train_throughput.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["recipe"] + ["b16"] * 7  # Liger's row needs CUDA
    for row in rows:
        # 3 steps asked, 4 timed: two whole megabatches of 2 batches (128 items), so every length rank twice
        assert row["timed_steps"] == len(row["step_s"]) == len(row["step_tokens"]) == 4 and all(s > 0 for s in row["step_s"])
        assert min(row["step_tokens"]) >= 16 * 120, "batch 16 of 120..182-token items, padding not counted"
        # tokens per timed item, padding not counted: whole megabatches take the items' mean length, 151
        assert abs(row["mean_item_tokens"] - 151) < 8, row["mean_item_tokens"]
        assert row["median_tokens_per_s"] > 0 and row["tokens_per_s"] > 0

    assert [r["optimizer"] for r in rows[:-2]] == ["AdamW"] * 6 and [r["optimizer"] for r in rows[-2:]] == ["AdamW (fused)"] * 2
    text = markdown.read_text()
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| course recipe") or line.startswith("| pricer")]
    assert len(table) == len(rows)
    recipe = rows[0]
    for row, cells in zip(rows, table, strict=True):
        assert cells[0] == "| " + row["label"]
        mean_ratio, median_ratio = float(cells[-2]), float(cells[-1].rstrip(" |"))
        assert mean_ratio == pytest.approx(row["tokens_per_s"] / recipe["tokens_per_s"], abs=0.006), row["label"]
        assert median_ratio == pytest.approx(row["median_tokens_per_s"] / recipe["median_tokens_per_s"], abs=0.006), row["label"]
    assert len({cells[-1] for cells in table}) > 1, "measured rates differ: a ratio column of one value is no ratio"
    assert "+ causal mask only" in text and "+ batches padded to a multiple of 8" in text
    losses = re.findall(r" (\d+\.\d{5})[;.]", rows[-1]["notes"][0])
    assert len(losses) == 7 and len(set(losses)) == 1, rows[-1]["notes"][0]


# ---------------------------------------------------------------- sweep value: the analysis on real records

RECORDS = ROOT / "bench" / "results" / "sweep_value.json"  # per-trial records of real GPU sweeps (seeds 0-2)


def _sweep_value():
    """bench/sweep_value.py as a module (bench/ is scripts, not a package)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("sweep_value", ROOT / "bench" / "sweep_value.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def _by_end(trials: list[dict]) -> list[dict]:
    return sorted(trials, key=lambda t: datetime.fromisoformat(t["end"]))


def test_sweep_value_selects_on_val_within_the_budget_and_pairs_by_seed() -> None:
    """On the recorded sweeps: the model a strategy holds at 1/3 and 1x of its seed's grid compute is the
    lowest val among the trials ended within that many steps (counted in the order they ended), and each
    paired difference is that test error minus random search's of the same seed; recomputed here from the raw
    trials, not from the analysis."""
    sv = _sweep_value()
    data = sv.merge([json.loads(RECORDS.read_text())])
    result = sv.analyse(data)
    seeds = sorted({t["seed"] for t in data["trials"]})
    assert result["seeds"] == seeds and len(seeds) >= 3

    def mine(strategy: str, seed: int) -> list[dict]:
        return [t for t in data["trials"] if (t["strategy"], t["seed"], t["schedule"]) == (strategy, seed, "async")]

    picked: dict[tuple[str, str, int], float] = {}
    for strategy in ("grid", "random", "tpe_median", "tpe_hyperband"):
        for seed in seeds:
            grid_steps = sum(t["steps"] for t in mine("grid", seed))
            assert grid_steps == 18 * 300
            for name, share in (("1/3", 1 / 3), ("1x", 1.0)):
                spent, within = 0, []
                for t in _by_end(mine(strategy, seed)):
                    spent += t["steps"]
                    if spent <= share * grid_steps and t["val"] is not None:
                        within.append(t)
                best = min(within, key=lambda t: t["val"])
                picked[(strategy, name, seed)] = best["test"]
                assert result["per_seed"][strategy][seed][f"test_{name}"] == best["test"]
    for strategy in ("grid", "tpe_median", "tpe_hyperband"):
        for name in ("1/3", "1x"):
            diffs = [picked[(strategy, name, s)] - picked[("random", name, s)] for s in seeds]
            row = result["rows"][strategy][f"vs_random_{name}"]
            assert row["median"] == pytest.approx(statistics.median(diffs))
            assert min(diffs) <= row["lo"] <= row["median"] <= row["hi"] <= max(diffs)
    # pruned trials spend steps but give no model: a pruning sweep holds fewer models at 1/3
    hyperband = [t for s in seeds for t in mine("tpe_hyperband", s)]
    assert any(t["state"] == "PRUNED" and t["steps"] < 300 for t in hyperband)


def test_sweep_value_interval_decides_what_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A difference is "lower" only where the whole bootstrap interval is below zero and enough seeds are
    paired: 3 recorded seeds call nothing; with the seed minimum lowered to 3, the recorded TPE + median
    pruning shows no difference at 1/3 against random search, the same records with its test errors $100
    lower show "lower", and the verdict follows. The interval keeps an inf ("never reached") as an inf."""
    sv = _sweep_value()
    data = sv.merge([json.loads(RECORDS.read_text())])
    row = sv.analyse(data)["rows"]["tpe_median"]["vs_random_1/3"]
    assert row["n"] == 3 and sv.shown(row) == "too few seeds to tell"
    monkeypatch.setattr(sv, "MIN_SEEDS", 3)
    assert row["lo"] < 0 < row["hi"] and sv.shown(row) == "no difference shown"

    better = json.loads(RECORDS.read_text())
    for t in better["trials"]:
        if t["strategy"] == "tpe_median" and t["test"] is not None:
            t["test"] -= 100
    result = sv.analyse(sv.merge([better]))
    shifted = result["rows"]["tpe_median"]["vs_random_1/3"]
    assert shifted["hi"] < 0 and sv.shown(shifted) == "lower"
    verdict = "\n".join(sv.verdict(result))
    assert "TPE + median pruning (28) against random search, test error: at 1/3 lower (3 seeds)" in verdict
    # the goal also needs the grid's best matched within half its compute: these seeds' interval reaches past it
    assert result["rows"]["tpe_median"]["frac_to_grid_best"]["hi"] > 0.5 and "Goal not met by TPE + median" in verdict

    same = sv.median_interval([2.0] * 7)
    assert (same["median"], same["lo"], same["hi"]) == (2.0, 2.0, 2.0)
    never = sv.median_interval([0.2, 0.3, float("inf"), float("inf"), float("inf")])
    assert never["median"] == float("inf") and never["lo"] <= 0.3 and never["hi"] == float("inf")
    assert sv.median_interval([1.0, 5.0, 2.0, 8.0]) == sv.median_interval([1.0, 5.0, 2.0, 8.0])  # seeded


def test_sweep_value_noise_of_one_configuration_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid runs its 18 points on every seed: each point's spread over seeds is the noise of one
    configuration (checked here against the raw records), and `analyse` writes the section with it."""
    sv = _sweep_value()
    data = sv.merge([json.loads(RECORDS.read_text())])
    noise = sv.analyse(data)["noise"]
    assert len(noise["points"]) == 18
    point = noise["points"][0]
    runs = [t for t in data["trials"] if t["strategy"] == "grid" and t["schedule"] == "async" and t["params"] == point["params"]]
    assert len(runs) == point["seeds"] == 3
    assert point["val_sd"] == pytest.approx(statistics.stdev(t["val"] for t in runs))
    assert point["test_max"] == max(t["test"] for t in runs)
    assert point["val_mean"] == min(p["val_mean"] for p in noise["points"])

    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\n## Sweep value\n\nold numbers\n\n## Training throughput\n\nkept\n")
    monkeypatch.setattr(sys, "argv", ["sweep_value.py", "analyse", str(RECORDS), "--markdown", str(markdown),
                                      "--png", str(tmp_path / "sweep_value.png")])
    sv.main()
    text = markdown.read_text()
    assert "old numbers" not in text and "## Training throughput\n\nkept" in text
    assert f"val ${point['val_mean']:.2f} ± {point['val_sd']:.2f}" in text
    # per-trial time by length, from the trials' own start and end: a pruned 50-step trial against a whole one
    for steps in (50, 300):
        walls = [datetime.fromisoformat(t["end"]).timestamp() - datetime.fromisoformat(t["start"]).timestamp()
                 for t in data["trials"] if t["schedule"] == "async" and t["steps"] == steps and t["state"] != "FAIL"]
        assert f"{steps} steps {statistics.median(walls):.1f} s ({len(walls)} trials)" in text
    assert (tmp_path / "sweep_value.png").stat().st_size > 10_000
