"""The training-throughput benchmark's pipeline on a tiny Llama: the GPU runs are too dear to find its bugs."""

import json
import re
import subprocess
import sys
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
