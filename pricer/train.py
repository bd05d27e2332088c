"""The one SFT entrypoint: python -m pricer.train lora=r8 hardware=t4

A run, top to bottom: validate the config, load the data slices, claim the run (name,
dir, Hub repo, W&B run), load the model, train, evaluate, publish, and return the
objective a --multirun sweeper minimises. Each step is one call into the module that
owns it; nothing below calls back up into this file.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pricer import run_names
from pricer.claim import Claim, DiskFull, claim_run, drop_unclaimed_dir, recording_status
from pricer.config import RunConfig, validate
from pricer.config_errors import ConfigError, hydra_raises, library_errors_in_one_line
from pricer.data import DataError, load_slices
from pricer.distributed import is_main
from pricer.interrupt import raise_if_signalled
from pricer.logs import install_log_filters
from pricer.objectives import REPORTED_SCORES, sweep_objective
from pricer.presets import check_repeated_overrides, preset_notes
from pricer.resume import ResumeError, write_run

log = logging.getLogger("pricer")
OmegaConf.register_new_resolver("pricer_run_dir", run_names.claim_run_dir, replace=True)  # hydra.run.dir: one dir per run
OmegaConf.register_new_resolver("pricer_rank_subdir", run_names.rank_subdir, replace=True)  # sweep=slurm: a dir per task


def train(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    choices = dict(hydra_cfg.runtime.choices)
    for note in preset_notes(choices):  # first: a preset that also switched another group says so
        log.info("%s", note)
    run = validate(cfg, choices=choices)  # fails here, before any download
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and sweep_objective(run.optimized_metric) != run.optimized_metric:
        log.info("sweep: selecting on %s (held-out validation items), %s is the report",
                 sweep_objective(run.optimized_metric), run.optimized_metric)
        run = dataclasses.replace(run, optimized_metric=sweep_objective(run.optimized_metric))
    from pricer import evaluate, fit, modeling, tracking, trial
    from pricer.metrics import run_report

    evaluation, data, hardware = run.evaluation, run.data, run.hardware
    holds_out = bool(evaluation.eval_steps) or run.optimized_metric.startswith("val/")
    slices = load_slices(data.path, data.data_files, data.revision, data.max_train_samples,
                         evaluation.test_items, evaluation.val_items if holds_out else None)  # before the claim:
    # a data problem leaves no run behind
    raise_if_signalled()  # a signal that a library swallowed while validating or reading: no run is claimed
    claim = claim_run(Path(hydra_cfg.runtime.output_dir), run.project, run.output_root, run.resume or trial.resumable_run_dir(),
                      list(hydra_cfg.overrides.task), run.hub, f"sweep-{Path(hydra_cfg.sweep.dir).name}" if multirun else None,
                      run.lora, force=run.resume_force)
    run_dir, adapter_dir = claim.run_dir, claim.run_dir / "adapter"
    log.info("run %s -> %s (hub: %s)", claim.project_run_name, run_dir, claim.repo_id or "off")
    trial.set_trial_attrs(run_dir=str(run_dir.absolute()), hub_repo=claim.repo_id, wandb_run=claim.project_run_name)

    # run.json says failed, interrupted, pruned or finished, whatever happens; end_job runs last
    with recording_status(run_dir, functools.partial(end_job, str(run.tracking.backend))):
        tokenizer, model = modeling.load_for_run(run.model, run.quant, hardware.compute_dtype, hardware.accelerator,
                                                 hardware.liger)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        tracked_config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) | {
            "run_name": claim.run_name, "hub_repo": claim.repo_id, "trial": trial.current_trial_info()}
        report_to = tracking.start(str(run.tracking.backend), run.tracking.project or run.project,
                                   claim.project_run_name, claim.group, tracked_config, str(run_dir), claim.wandb_id,
                                   run.tracking.entity, tracking.preset_tags(choices, run.tracking.tags),
                                   job_type="trial" if tracked_config["trial"] else "train",
                                   storage=os.environ.get(trial.ENV_STORAGE), link=trial.set_trial_attrs)
        keeper = fit.CheckpointKeeper.for_run(run_dir, claim.repo_id, run.hub, run.sft["save_total_limit"])
        with fit.StopOnSignal() as stopper:  # signals from the start of training to the end of scoring
            model, training = fit.fit(
                model, tokenizer, slices.train, slices.val, run_dir=run_dir, run_name=claim.project_run_name,
                sft=run.sft, lora=run.lora, seed=run.seed, hardware=hardware, evaluation=evaluation,
                report_to=report_to, keeper=keeper, stopper=stopper,
                lean_4bit=hardware.lean_4bit and bool(run.quant.get("load_in_4bit")), auto_batch_size=run.auto_batch_size)
            # from here to the end of scoring a signal ends the run at once: a resume evaluates
            metrics = stopper.score_on_main(lambda: evaluate.score_slices(  # once, on rank 0: every rank gets its numbers
                model, tokenizer, slices, adapter_dir, evaluation.top_k, evaluation.batch_tokens,
                run.sft["max_length"], claim.project_run_name)) | training
        tracking.log_summary(str(run.tracking.backend), metrics, images=[adapter_dir / "price_chart.png"])
        publish(run, claim, config_yaml, metrics)
        trial.set_trial_attrs(**{k: metrics[k] for k in REPORTED_SCORES if k in metrics})  # pricer.compare's columns
    for line in run_report(metrics, describe_model(run), f"data={choices.get('data')} ({data.path})",
                           len(slices.train), run_dir, next_command(hardware.accelerator)) if is_main() else []:
        log.info("%s", line)
    return metrics[run.optimized_metric]


def end_job(tracking_backend: str, status: str) -> None:
    """However a job ends: close its W&B run, and undo Liger's patch so that the next job of a
    --multirun in this process gets transformers' own Llama classes."""
    from pricer import speedups, tracking

    tracking.finish(tracking_backend, status)
    speedups.restore_liger()


def publish(run: RunConfig, claim: Claim, config_yaml: str, metrics: dict) -> None:
    """The adapter dir gets its metrics, resolved config and model card; then the final push (rank 0)."""
    if not is_main():
        return
    from pricer import hub
    from pricer.interrupt import Interrupted
    from pricer.push import PushFailed
    from pricer.retry import call_with_retries

    adapter_dir = claim.run_dir / "adapter"
    (adapter_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (adapter_dir / "config.yaml").write_text(config_yaml)  # resolved: what the run really used
    dataset = run.data.path if run.data.data_files is None else "local files"
    card = hub.model_card(claim.repo_id or claim.project_run_name, run.model.pretrained_model_name_or_path,
                          dataset, claim.run_name, config_yaml, metrics)
    (adapter_dir / "README.md").write_text(card)
    if claim.repo_id is None:
        return
    try:
        call_with_retries(lambda: hub.push_final(claim.repo_id, adapter_dir, run.hub.private), "final adapter",
                          run.hub.push_attempts, run.hub.push_wait_s)
    except Interrupted:
        raise  # a signal mid-push: the run is interrupted, and a resume publishes again
    except Exception as err:  # the run ends non-zero: its files stay, and `pricer.push` finishes the push
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise PushFailed(f"the final push to {claim.repo_id} failed ({first}): the adapter, metrics and checkpoints are "
                         f"kept in {claim.run_dir}: finish it with `python -m pricer.push {claim.run_dir}`") from None
    write_run(claim.run_dir, final_pushed=True)
    log.info("pushed to %s", claim.repo_id)


def describe_model(run: RunConfig) -> str:
    weights = "4-bit" if run.quant.get("load_in_4bit") else "8-bit" if run.quant.get("load_in_8bit") else "16/32-bit"
    return f"{Path(run.model.pretrained_model_name_or_path).name} ({weights} weights)"


def next_command(accelerator: str) -> str:
    if accelerator == "cpu":
        return ("a sweep, `python -m pricer.train experiment=demo sweep=demo`, or on a GPU the course's run, "
                "`python -m pricer.train lora=r8 hardware=t4`")
    return "compare runs with `python -m pricer.compare`, or sweep with `python -m pricer.train sweep=tpe`"


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry: bad input ends with one line naming the fix, not a traceback."""
    install_log_filters()  # first: importing transformers below already imports bitsandbytes
    from pricer.interrupt import Interrupted, RaiseOnSignal, interruption_in  # here, not at the top: --cfg job must not import torch
    from pricer.push import PushFailed
    from pricer.tracking import import_trainer_integrations

    single = HydraConfig.get().mode != RunMode.MULTIRUN  # a sweeper handles signals itself
    try:  # from here a signal ends the run in one line (exit 128 + signal), its dir dropped if still unclaimed;
        try:
            with RaiseOnSignal() if single else contextlib.nullcontext():  # training and scoring handle it their way
                check_repeated_overrides(list(HydraConfig.get().overrides.task))
                import_trainer_integrations()  # without "Running in WANDB offline mode", printed even with tracking=none
                return train(cfg)
        except Exception as err:  # a signal a library wrapped in its own error is still the signal
            interrupted = interruption_in(err)
            if interrupted is None or interrupted is err:
                raise
            raise interrupted from None
    except (ConfigError, DataError, ResumeError, Interrupted, DiskFull, PushFailed) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweeper records the failed job and goes on
        if not isinstance(err, Interrupted) or err.step is None:  # nothing of a claimed run is dropped (run.json)
            drop_unclaimed_dir(Path(HydraConfig.get().runtime.output_dir))
            run_names.release_unclaimed(Path(HydraConfig.get().runtime.output_dir))
        bad_input = isinstance(err, (ConfigError, DataError, ResumeError))  # 2; a full disk or a failed push: 1
        sys.exit(128 + err.signum if isinstance(err, Interrupted) else 2 if bad_input else 1)


def cli() -> None:
    """`python -m pricer.train`: a key or value the schema refuses while Hydra composes (before `main`
    runs) ends in one line and exit 2, as every other bad input does, not in Hydra's report."""
    try:
        with hydra_raises(), library_errors_in_one_line():
            main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # a failure the run has no better words for: its traceback and exit 1, as Hydra ends it
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    cli()
