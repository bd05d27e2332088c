"""batch=auto (pricer.batch_size): the probe's real steps leave no trace, checkpoint as the run does,
the line fit on measured peaks, and on a GPU the picked batch fits the budget it measured."""

import math
from pathlib import Path

import pytest
import torch
from test_speedups import tiny_trainer

from pricer import batch_size


def test_probe_steps_leave_no_trace_and_the_new_batch_is_used(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """batch=auto's probe runs real training steps on copies of the longest row: they leave no logged
    metric, token count or gradient behind, and the batch it picks is the one the dataloader serves."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False)
    lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    run_step = batch_size.step_runner(trainer)
    for batch in (8, 16):
        run_step(batch)
    assert trainer._total_train_tokens == 0 and not trainer._metrics["train"], "probe steps leave no metrics"
    assert all(p.grad is None for p in trainer.model.parameters()), "probe gradients are dropped"
    assert all(torch.equal(p, lora[n]) for n, p in trainer.model.named_parameters() if n in lora), "no optimizer step"
    batch_size.set_batch_size(trainer, 24)
    assert len(next(iter(trainer.get_train_dataloader()))["input_ids"]) == 24


def test_probe_steps_checkpoint_when_the_run_does(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """The Trainer turns checkpointing on in train(); a probe before it must too, or it over-counts memory."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=True)
    assert not trainer.model.is_gradient_checkpointing
    batch_size.step_runner(trainer)(2)
    assert trainer.model.is_gradient_checkpointing


def test_the_fitted_batch_on_peaks_measured_on_the_h200() -> None:
    """The line fit on two peaks batch=auto's probe measured (BENCHMARKS.md: hardware=h100, quant=none,
    80 GiB less 10 %): batch 56 at 70.5 GiB, 64 at 78.1 GiB -> 0.95 GiB a row over 17.3 GiB -> 57.6 rows,
    so 56, which the probe then measured within the 72 GiB."""
    assert batch_size.fitted_batch((56, 70.5), (64, 78.1), usable=72.0, ceiling=63, multiple=8) == 56
    assert batch_size.fitted_batch((56, 70.5), (64, 78.1), usable=72.0, ceiling=63, multiple=1) == 57
    assert batch_size.fitted_batch((56, 70.5), (64, 78.1), usable=200.0, ceiling=63, multiple=8) == 56, "capped below a failed batch"
    assert batch_size.fitted_batch((8, 5.0), (16, 5.0), usable=72.0, ceiling=40, multiple=8) == 40, "flat: the ceiling"


def test_the_probe_never_runs_a_step_the_line_puts_over_the_budget() -> None:
    """Peaks as the real probe measured them for the 8B shape on an H100 (5.72 GiB + 0.8054 GiB a row).
    Two sweep workers sharing the card have 39.5 GiB each: batch 64 (~57 GiB) would reach for the other
    worker's memory, so it is not run, and the pick is the same 32. On a card of its own (80 GiB) the
    pick is what the doubling and the line found before (80), with the step at 128 (~109 GiB) left out."""
    def probe(budget: float) -> tuple[int, list[int]]:
        measured: list[int] = []

        def measure(run_step, batch: int) -> float:
            measured.append(batch)
            return 5.72 + 0.8054 * batch

        return batch_size.pick_batch_size(lambda batch: None, budget, measure=measure), measured

    assert probe(39.5) == (32, [8, 16, 32])
    assert probe(80.0) == (80, [8, 16, 32, 64, 80])


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the probe measures CUDA memory")


@pytest.mark.gpu
@cuda
def test_auto_batch_on_the_gpu_fits_the_budget_it_measured(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """The real probe (cuda_peak_gib) on real steps: the picked batch's own measured peak is within the
    budget less the margin, and the next multiple of 8 above it is not (or the search hit its limit)."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False, use_cpu=False)
    run_step = batch_size.step_runner(trainer)
    budget = 1.5 * batch_size.cuda_peak_gib(run_step, 64)  # a budget this tiny model can fill
    batch = batch_size.pick_batch_size(run_step, budget, limit=4096)
    assert batch % 8 == 0 and batch_size.cuda_peak_gib(run_step, batch) <= 0.9 * budget
    assert batch == 4096 or batch_size.cuda_peak_gib(run_step, 2 * batch) > 0.9 * budget
    with pytest.raises(MemoryError, match="gradient_checkpointing"):
        batch_size.pick_batch_size(run_step, 1e-3)


@pytest.mark.gpu
@cuda
def test_a_real_out_of_memory_counts_as_over_budget() -> None:
    def allocate(batch: int) -> None:
        torch.empty(batch * 2**40, dtype=torch.uint8, device="cuda")  # TiBs: more than any card

    assert batch_size.cuda_peak_gib(allocate, 64) == math.inf
    assert batch_size.cuda_peak_gib(lambda batch: None, 8) < math.inf
