"""per_device_train_batch_size=auto: the largest batch whose measured peak memory fits the card.

The speed-ups (pricer.speedups) and checkpointing off trade activation memory for speed, and
presets spend what is left on a larger batch; how much a row costs depends on the model,
the quantisation, the row lengths and the kernels, so it is measured, not guessed: real
training steps on the run's own trainer and its longest row, before train() starts.
"""

import logging
import math
from collections.abc import Callable

log = logging.getLogger("pricer")
GIB = 2**30


def step_runner(trainer) -> Callable[[int], None]:
    """One real training step of `trainer` at a given batch size, on copies of its longest row.

    The longest row is the worst case for memory, as group_by_length's first batch is;
    checkpointing is switched on first if the run asks for it, as train() would.
    Gradients are dropped after each step, and TRL's per-step metrics are reset so the
    probe steps leave no trace in the logged entropy, accuracy or token count.
    """
    rows = trainer.train_dataset
    longest = rows[max(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))]
    if trainer.args.gradient_checkpointing:  # the Trainer turns it on only when train() starts
        model = trainer.model  # transformers 5.24 renamed the switch; the GPU image's 5.17 has only the old name
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable(trainer.args.gradient_checkpointing_kwargs)

    def run(batch_size: int) -> None:
        tokens = trainer._total_train_tokens  # TRL 1.16's running count, logged as num_tokens
        training_step(trainer, trainer.data_collator([longest] * batch_size))
        trainer.model.zero_grad(set_to_none=True)
        trainer._total_train_tokens = tokens
        trainer._metrics["train"].clear()

    return run


def training_step(trainer, inputs: dict):
    """Forward and backward of one batch as the Trainer's loop runs them (loss normalised by the
    batch's completion tokens); the returned loss is detached, the gradients stay on the model."""
    batches, completion_tokens = trainer.get_batch_samples(iter([inputs]), 1, trainer.args.device)
    return trainer.training_step(trainer.model, batches[0], completion_tokens)


def cuda_peak_gib(run_step: Callable[[int], None], batch_size: int) -> float:
    """Peak reserved GiB of one step at `batch_size`; infinite if it ran out of memory.

    Reserved, not allocated: the card must hold the allocator's whole pool. On the t4
    budget at batch 80 the pool peaked 1.3 GiB above the allocated peak (14.3 vs 13.0).
    """
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out_of_memory = False
    try:
        run_step(batch_size)
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        out_of_memory = True  # freed below, outside the handler that holds the traceback
    peak = torch.cuda.max_memory_reserved() / GIB
    torch.cuda.empty_cache()
    return math.inf if out_of_memory else peak


def pick_batch_size(
    run_step: Callable[[int], None],
    budget_gib: float,
    measure: Callable[[Callable[[int], None], int], float] = cuda_peak_gib,
    start: int = 8,
    limit: int = 512,
    margin: float = 0.1,
    multiple: int = 8,
) -> int:
    """batch=auto: the largest batch whose measured peak stays within the budget less a margin.

    Doubles the batch from `start` until a real step goes over the budget, fits a line
    (peak = fixed + per-row x batch) through the last two measured points, and checks
    the largest multiple of `multiple` it allows with one more real step. A doubling that the
    line through the last two points puts over the whole budget is not run: on a card that
    sweep workers share, the budget is this worker's share, and such a step reached for the
    others' memory (two 8B-shaped workers on one H100, 39.5 GiB each, both probed batch 64
    at once and filled the card; one probing while the other trained would end that one's
    trial). On a card of its own the step would only have run out of memory. The margin
    covers the allocator's fragmentation, the CUDA context and the optimizer's state,
    which appears only at the first optimizer step. `measure` is injectable so a
    simulated budget can stand in for a GPU.
    """
    usable = budget_gib * (1 - margin)
    points: list[tuple[int, float]] = []
    batch, ceiling = start, limit
    while batch <= limit:
        predicted = predicted_peak(points[-2], points[-1], batch) if len(points) >= 2 else 0.0
        if predicted > budget_gib:
            log.info("batch=auto: batch %d would peak at ~%.1f GiB, over the %g GiB budget: not run",
                     batch, predicted, budget_gib)
            ceiling = batch - 1
            break
        points.append((batch, measure(run_step, batch)))
        log.info("batch=auto: batch %d peaks at %.2f GiB (usable: %.1f GiB = %.0f %% of %g)",
                 batch, points[-1][1], usable, 100 * (1 - margin), budget_gib)
        if points[-1][1] > usable:
            ceiling = batch - 1
            break
        batch *= 2
    fitting = [b for b, peak in points if peak <= usable]
    if not fitting:
        raise MemoryError(f"batch=auto: even batch {start} needs {points[0][1]:.1f} GiB of the usable {usable:.1f}: "
                          "turn gradient_checkpointing on, use quant=nf4, or set a larger memory_gib")
    best = fitting[-1]
    measured = [(b, peak) for b, peak in points if math.isfinite(peak)][-2:]
    if len(measured) == 2 and best < ceiling:
        guess = fitted_batch(measured[0], measured[1], usable, ceiling, multiple)
        if guess > best:
            peak = measure(run_step, guess)
            log.info("batch=auto: batch %d peaks at %.2f GiB", guess, peak)
            best = guess if peak <= usable else best
    log.info("batch=auto: per_device_train_batch_size=%d", best)
    return best


def fitted_batch(point0: tuple[int, float], point1: tuple[int, float], usable: float, ceiling: int, multiple: int) -> int:
    """The largest multiple of `multiple` (at most `ceiling`) whose peak, on the line through two measured
    (batch, peak GiB) points (peak = fixed + per-row x batch), stays within `usable` GiB."""
    fixed, per_row = line_through(point0, point1)
    rows = (usable - fixed) / per_row if per_row > 0 else ceiling
    guess = int(min(rows, ceiling)) // multiple * multiple
    log.info("batch=auto: peak ~ %.2f GiB + %.4f GiB x batch -> (%.1f - %.2f) / %.4f = %.0f rows -> batch %d",
             fixed, per_row, usable, fixed, per_row, rows, guess)
    return guess


def line_through(point0: tuple[int, float], point1: tuple[int, float]) -> tuple[float, float]:
    """(fixed GiB, GiB per row) of the line through two measured (batch, peak GiB) points."""
    (b0, p0), (b1, p1) = point0, point1
    per_row = (p1 - p0) / (b1 - b0)
    return p0 - per_row * b0, per_row


def predicted_peak(point0: tuple[int, float], point1: tuple[int, float], batch: int) -> float:
    """GiB at `batch` on the line through two measured points."""
    fixed, per_row = line_through(point0, point1)
    return fixed + per_row * batch


def set_batch_size(trainer, batch_size: int) -> None:
    """Give a built trainer a new per-device batch (the Trainer copies it at construction)."""
    trainer.args.per_device_train_batch_size = batch_size
    trainer._train_batch_size = trainer.args.train_batch_size
