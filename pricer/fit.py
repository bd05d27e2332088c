"""Train the LoRA adapter with TRL, from the last complete checkpoint if there is one, and save it.

One call does the whole training step of a run: build the trainer, apply the speed
switches in the order they need, train (or, if an earlier attempt already finished
training, load its adapter), save the adapter and return the training numbers. A
signal stops training at a saved checkpoint (pricer.interrupt.Interrupted); one that
comes after the last step is held until the adapter is saved, so a resume then only
evaluates.
"""

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import WandbCallback

from pricer.data import Items, fit_to_length
from pricer.distributed import agreed_signal, barrier, broadcast_object, is_main
from pricer.interrupt import SignalStop
from pricer.push import CheckpointPusher
from pricer.resume import read_run, write_run
from pricer.schema import Evaluation, Hardware, Hub
from pricer.tracking import live_run, unless_service_lost

log = logging.getLogger("pricer")


class StopOnSignal(SignalStop, TrainerCallback):
    """pricer.interrupt's signal stop as a Trainer callback: saves and stops at the end of the step;
    after training, through scoring, stops at once (the caller's `with` block)."""


class RecordCheckpoint(TrainerCallback):
    """run.json keeps the last step saved: a resume that finds no checkpoint then knows they were lost
    and says so (pricer.resume.check_continuable) instead of training again from step 0 unasked."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_save(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            write_run(self.run_dir, last_checkpoint=state.global_step)


class CheckpointKeeper(CheckpointPusher, TrainerCallback):
    """pricer.push's checkpoint pusher as a Trainer callback: pushes and rotates each saved checkpoint."""

    @classmethod
    def for_run(cls, run_dir: Path, repo_id: str | None, hub: Hub, keep: int | None) -> "CheckpointKeeper":
        """Pushes each checkpoint to `repo_id` where hub.hub_strategy is every_save; only rotates them otherwise."""
        every_save = repo_id if hub.hub_strategy == "every_save" else None
        return cls(run_dir, every_save, hub.private, keep, hub.push_attempts, hub.push_wait_s)


class WandbLogging(WandbCallback):
    """transformers' W&B callback, logging into the run pricer.tracking.start began, except that W&B's
    service process going away (a SLURM job's signal ends it too) ends W&B's logging for this attempt,
    not the training: the signal's checkpoint is still saved (pricer.tracking.service_lost)."""

    def _unless_lost(self, hook, *args, **kwargs):
        if live_run() is None:  # its service went away earlier in this attempt
            return None
        with unless_service_lost():
            return hook(*args, **kwargs)
        return None

    def on_train_begin(self, *args, **kwargs):
        return self._unless_lost(super().on_train_begin, *args, **kwargs)

    def on_log(self, *args, **kwargs):
        return self._unless_lost(super().on_log, *args, **kwargs)

    def on_save(self, *args, **kwargs):
        return self._unless_lost(super().on_save, *args, **kwargs)

    def on_train_end(self, *args, **kwargs):
        return self._unless_lost(super().on_train_end, *args, **kwargs)

    def on_predict(self, *args, **kwargs):
        return self._unless_lost(super().on_predict, *args, **kwargs)


def fit(model, tokenizer, train_dataset, val: Items | None, *, run_dir: Path, run_name: str, sft: dict[str, Any],
        lora: dict[str, Any], seed: int, hardware: Hardware, evaluation: Evaluation, report_to: list[str],
        keeper: CheckpointKeeper, stopper: StopOnSignal, lean_4bit: bool, auto_batch_size: bool):
    """The trained PEFT model and the run's training numbers (loss, steps, seconds, trainable params).

    `auto_batch_size` measures peak memory and fills hardware.memory_gib; otherwise `sft`'s batch size
    stays. `lean_4bit`: hardware.lean_4bit where the base is 4-bit. `keeper` pushes and rotates
    checkpoints as they are saved. `stopper` takes signals from the start of training: the caller's
    `with stopper:` keeps it, raising at once, until scoring ends."""
    from pricer import batch_size, speedups, trial
    from pricer.modeling import build_lora_config
    from pricer.sft import build_sft_config, build_trainer

    checkpoints_dir, adapter_dir = run_dir / "checkpoints", run_dir / "adapter"
    # the Trainer's own W&B callback would stop training when W&B's service goes away: WandbLogging does not
    args = build_sft_config(sft, output_dir=str(checkpoints_dir), run_name=run_name,
                            report_to=[name for name in report_to if name != "wandb"], seed=seed,
                            use_cpu=hardware.accelerator == "cpu")
    eval_steps = evaluation.eval_steps
    callbacks = [keeper, RecordCheckpoint(run_dir), stopper, *trial.trial_callbacks(eval_during_training=bool(eval_steps)),
                 *([WandbLogging()] if "wandb" in report_to else [])]
    if sft.get("max_length"):  # long rows keep their price, as evaluation keeps "Price is $"
        train_dataset = fit_to_length(train_dataset, tokenizer, sft["max_length"])
    trainer = build_trainer(model, tokenizer, args, build_lora_config(lora), train_dataset, callbacks,
                            hardware.compute_dtype)
    speedups.causal_mask_only(trainer.model, hardware.accelerator)
    if lean_4bit:  # before the batch probe: it counts the fp32 absmax this drops
        from pricer.frozen4bit import lean_4bit_linears

        lean_4bit_linears(trainer.model)
    if eval_steps:
        from pricer.evaluate import price_eval_callback

        trainer.add_callback(price_eval_callback(trainer, val.prompts, val.prices, eval_steps, evaluation.top_k,
                                                 evaluation.batch_tokens, sft["max_length"]))
    if auto_batch_size:  # before compiling: the probe then measures eager memory, the safe side
        # once per run: a resume (maybe on another GPU after a requeue) keeps the batch, so the schedule
        # and the batches it skips on resume stay the first attempt's
        stored = read_run(run_dir).get("auto_batch_size")
        picked = broadcast_object(stored or batch_size.pick_batch_size(batch_size.step_runner(trainer), hardware.memory_gib))
        if stored:
            log.info("per_device_train_batch_size=auto: %d, as the run's first attempt picked it", picked)
        elif is_main():
            write_run(run_dir, auto_batch_size=picked)
        batch_size.set_batch_size(trainer, picked)  # several ranks: all take rank 0's pick
    if hardware.compile:
        speedups.compile_layers(trainer.model)
    trainable = log_sizes(trainer, args)
    training = read_run(run_dir).get("trained")  # set once training ended: a resume then only evaluates
    if training and (adapter_dir / "adapter_model.safetensors").exists():
        from pricer.modeling import load_adapter_weights

        log.info("training ended at step %d in an earlier attempt: evaluating its adapter only", training["train_steps"])
        load_adapter_weights(trainer.model, adapter_dir)
        stopper.install().training_ended(training["train_steps"], None)
    else:
        training = train_and_save(trainer, tokenizer, stopper, keeper, checkpoints_dir, adapter_dir)
        if is_main():
            write_run(run_dir, trained=training)
        # a signal that came while the adapter was saved raises now (several ranks: all raise, or none);
        # the adapter is saved, so a resume evaluates
        stopper.training_ended(training["train_steps"], agreed_signal(stopper.signum))
    return trainer.model, training | {"trainable_params": trainable}


def train_and_save(trainer, tokenizer, stopper, keeper, checkpoints_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    """Train (from the last complete checkpoint, if any) and save the final adapter; the training numbers."""
    from pricer import trial
    from pricer.interrupt import Interrupted
    from pricer.resume import complete_checkpoints, drop_incomplete_checkpoints

    if is_main():
        drop_incomplete_checkpoints(checkpoints_dir)
    barrier()  # the other ranks look for the last checkpoint once rank 0 has dropped the broken ones
    last = complete_checkpoints(checkpoints_dir)[-1:] if checkpoints_dir.exists() else []
    if last:
        log.info("continuing from %s", last[0])
    stopper.install()  # stays after training: the caller's `with stopper:` ends it
    try:
        result = trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
    finally:
        keeper.close()  # pushes queued checkpoints, however training ended
    if stopper.signum is not None and trainer.state.global_step < trainer.state.max_steps:
        raise Interrupted(stopper.signum, trainer.state.global_step, agreed=True)  # every rank stopped at this step
    trial.raise_if_pruned()  # after the trainer's own shutdown: a pruned trial keeps its checkpoint
    if is_main():  # every rank holds the same adapter (DDP)
        trainer.model.save_pretrained(adapter_dir)  # the adapter only, a few MB
        tokenizer.save_pretrained(adapter_dir)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else float("nan"),
        "last_logged_loss": losses[-1] if losses else float("nan"),
        "train_steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime", float("nan")),
    }


def log_sizes(trainer, args) -> int:
    """Log parameter counts and the effective batch; returns the trainable parameter count."""
    from pricer.sft import count_parameters

    trainable, total = count_parameters(trainer.model)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    log.info(
        "trainable params %s of %s (%.2f%%); effective batch %d = %d per device x %d accumulation x %d devices; "
        "<= %s tokens per step",
        f"{trainable:,}", f"{total:,}", 100 * trainable / total, batch, args.per_device_train_batch_size,
        args.gradient_accumulation_steps, args.world_size, f"{batch * args.max_length:,}",
    )
    return trainable
