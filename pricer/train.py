"""The one SFT entrypoint: python -m pricer.train lora=r8 hardware=t4

Reads top to bottom like the notebook it grew from: validate, name the run, load
the data, build the model, train, save, push, return the objective that a
--multirun sweeper minimises.
"""

import dataclasses
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pricer import naming
from pricer.config import REPORTED_SCORES, ConfigError, RunConfig, sweep_objective, validate
from pricer.data import DataError
from pricer.logs import install_log_filters
from pricer.resume import ResumeError, check_same_adapter_shape, find_resumable, owner, read_run, write_run

log = logging.getLogger("pricer")
OmegaConf.register_new_resolver("pricer_run_dir", naming.claim_run_dir, replace=True)  # hydra.run.dir: one dir per run


def train(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run = validate(cfg, choices=dict(hydra_cfg.runtime.choices))  # fails here, before any download
    if hydra_cfg.mode == RunMode.MULTIRUN and sweep_objective(run.optimized_metric) != run.optimized_metric:
        log.info("sweep: selecting on %s (held-out validation items), %s is the report",
                 sweep_objective(run.optimized_metric), run.optimized_metric)
        run = dataclasses.replace(run, optimized_metric=sweep_objective(run.optimized_metric))
    from pricer import tracking, trial
    from pricer.interrupt import Interrupted

    data = load_data(run)  # before the run is claimed: a data problem leaves no run behind
    run_dir, meta = start_or_resume(run, hydra_cfg)
    log.info("run %s -> %s (hub: %s)", meta["project_run_name"], run_dir, meta["repo_id"] or "off")
    trial.set_trial_attrs(hub_repo=meta["repo_id"], wandb_run=meta["project_run_name"])  # for pricer.compare

    status = "failed"  # whatever fails from here on (model load, training, push) marks the run failed
    try:
        tokenizer, model = load_model(run)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        report_to = tracking.start(
            run.tracking["backend"],
            run.tracking.get("project", run.project),
            meta["project_run_name"],
            meta["group"],
            OmegaConf.to_container(cfg, resolve=True)
            | {"run_name": meta["run_name"], "hub_repo": meta["repo_id"], "trial": trial.current_trial_info()},
            str(run_dir),
            meta["wandb_id"],
            run.tracking.get("entity"),
            run.tracking.get("tags"),
        )
        metrics = fit(run, model, tokenizer, data, run_dir, meta, report_to)
        tracking.log_summary(run.tracking["backend"], metrics, images=[run_dir / "adapter" / "price_chart.png"])
        write_card_and_push(run, run_dir, meta, config_yaml, metrics)
        trial.set_trial_attrs(**{k: metrics[k] for k in REPORTED_SCORES if k in metrics})  # pricer.compare's columns
        status = "finished"
    except Interrupted:
        status = "interrupted"
        raise
    except Exception as err:
        from optuna import TrialPruned

        status = "pruned" if isinstance(err, TrialPruned) else status
        raise
    finally:
        write_run(run_dir, status=status)
        tracking.finish(run.tracking["backend"], status)
    from pricer.metrics import plain_summary, summary_line

    for prefix in ("val", "test", "baseline"):
        scored = {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(prefix + "/")}
        if scored:
            log.info("%-8s %s", prefix, summary_line(scored))
    test, baseline = ({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(p + "/")}
                      for p in ("test", "baseline"))
    on_cpu = run.accelerator == "cpu"
    next_command = ("a sweep, `python -m pricer.train experiment=demo sweep=demo`, or on a GPU the course's run, "
                    "`python -m pricer.train lora=r8 hardware=t4`" if on_cpu else
                    "compare runs with `python -m pricer.compare`, or sweep with `python -m pricer.train sweep=tpe`")
    weights = "4-bit" if run.quant.get("load_in_4bit") else "8-bit" if run.quant.get("load_in_8bit") else "16/32-bit"
    model = f"{Path(run.model['pretrained_model_name_or_path']).name} ({weights} weights)"
    data_name = f"data={hydra_cfg.runtime.choices.get('data')} ({run.data['path']})"
    for line in plain_summary(model, data_name, data["train_items"],
                              metrics["train_steps"], metrics["train_runtime_s"], test, baseline, run_dir, next_command):
        log.info("%s", line)
    return metrics[run.optimized_metric]


def start_or_resume(run: RunConfig, hydra_cfg) -> tuple[Path, dict]:
    """A new run's names, or the names of the run that `resume=` continues (same repo, same W&B run)."""
    from pricer import hub

    overrides = sorted(o for o in hydra_cfg.overrides.task if not o.startswith("resume="))
    previous = find_resumable(run.resume, Path(run.output_root), overrides) if run.resume else None
    if previous is not None:
        check_same_adapter_shape(previous, run.lora)
        log.info("resuming %s (this attempt's own log: %s)", previous, hydra_cfg.runtime.output_dir)
        write_run(previous, status="running", resumed=read_run(previous).get("resumed", 0) + 1, **owner())
        return previous, read_run(previous)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    start = naming.run_start(run_dir)
    run_name = naming.claimed_name(run_dir) or naming.claim_run_name(start, Path(run.output_root) / ".run_names")
    repo_id = None
    if run.hub["push"]:
        user = hub.checked_account(run.hub["hf_user"], run.hub["push_attempts"], run.hub["push_wait_s"])
        repo_id = naming.hub_repo_id(user, run.project, run_name)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    write_run(
        run_dir,
        run_name=run_name,
        project_run_name=naming.project_run_name(run.project, run_name),
        repo_id=repo_id,
        private=run.hub["private"],
        group=f"sweep-{Path(hydra_cfg.sweep.dir).name}" if multirun else None,
        wandb_id=naming.tracker_run_id(),
        overrides=overrides,
        started=start.isoformat(),
        status="running",
        **owner(),
    )
    return run_dir, read_run(run_dir)


def load_data(run: RunConfig) -> dict:
    """Train items as prompt/completion; test (and validation) items as prompts and prices."""
    from pricer.data import load_splits, to_prompt_completion
    from pricer.evaluate import first_test_items

    splits = load_splits(run.data["path"], run.data["data_files"], run.data["revision"], run.data["max_train_samples"])
    train, evaluation = splits["train"], run.evaluation
    data = {"train_prices": [float(p) for p in train["price"]]}
    if evaluation["eval_steps"] or run.optimized_metric.startswith("val/"):  # held out from the train split's end
        if evaluation["val_items"] >= len(train):
            raise DataError(f"evaluation.val_items={evaluation['val_items']} leaves no training items of the "
                            f"{len(train)} in the train split: use fewer, e.g. evaluation.val_items={len(train) // 10}")
        cut = len(train) - evaluation["val_items"]
        data["val"] = first_test_items(train.select(range(cut, len(train))), evaluation["val_items"])
        train = train.select(range(cut))
    data["train"], data["train_items"] = to_prompt_completion(train), len(train)
    data["test"] = first_test_items(splits["test"], evaluation["test_items"])
    log.info("data: %d train / %d validation / %d test items scored from %s", len(train),
             len(data["val"][0]) if "val" in data else 0, len(data["test"][0]), run.data["path"])
    return data


def load_model(run: RunConfig):
    from pricer import modeling

    model_cfg = run.model
    if model_cfg["build_tiny"]:
        modeling.ensure_tiny_model(model_cfg["pretrained_model_name_or_path"])
    tokenizer = modeling.load_tokenizer(
        model_cfg["pretrained_model_name_or_path"], model_cfg["revision"], model_cfg["trust_remote_code"]
    )
    if run.liger:
        from pricer import speed

        speed.apply_liger(run.accelerator)  # patches transformers' Llama classes: before the model exists
    model = modeling.load_model(
        model_cfg["pretrained_model_name_or_path"],
        model_cfg["revision"],
        model_cfg["trust_remote_code"],
        model_cfg["attn_implementation"],
        run.quant,
        run.compute_dtype,
        run.accelerator,
        tokenizer.pad_token_id,
    )
    return tokenizer, model


def fit(run: RunConfig, model, tokenizer, data, run_dir: Path, meta: dict, report_to: list[str]) -> dict:
    """Train with TRL (continuing from the last checkpoint if there is one), save the final adapter."""
    from pricer import speed, trial
    from pricer.evaluate import evaluate_model, price_eval_callback, score_validation
    from pricer.interrupt import Interrupted, RaiseOnSignal, StopOnSignal
    from pricer.modeling import build_lora_config
    from pricer.push import CheckpointKeeper
    from pricer.training import build_sft_config, build_trainer

    checkpoints_dir = run_dir / "checkpoints"
    args = build_sft_config(
        run.sft,
        output_dir=str(checkpoints_dir),
        run_name=meta["project_run_name"],
        report_to=report_to,
        seed=run.seed,
        use_cpu=run.accelerator == "cpu",
    )
    push_each_save = run.hub["hub_strategy"] == "every_save"
    keeper = CheckpointKeeper(run_dir, meta["repo_id"] if push_each_save else None, run.hub["private"],
                              run.sft["save_total_limit"], run.hub["push_attempts"], run.hub["push_wait_s"])
    stopper = StopOnSignal()
    trainer = build_trainer(
        model, tokenizer, args, build_lora_config(run.lora), data["train"],
        callbacks=[keeper, stopper, *trial.trial_callbacks(eval_during_training=bool(run.evaluation["eval_steps"]))],
        compute_dtype=run.compute_dtype,
    )
    speed.causal_mask_only(trainer.model, run.accelerator)
    if run.lean_4bit and run.quant.get("load_in_4bit"):  # before batch=auto: the probe counts its fp32 absmax
        from pricer.frozen4bit import lean_4bit_linears

        lean_4bit_linears(trainer.model)
    evaluation = run.evaluation
    if evaluation["eval_steps"]:
        trainer.add_callback(price_eval_callback(trainer, *data["val"], evaluation["eval_steps"],
                                                 evaluation["top_k"], evaluation["batch_tokens"], run.sft["max_length"]))
    if run.auto_batch_size or run.compile:
        if run.auto_batch_size:  # before compiling: the probe then measures eager memory, the safe side
            speed.set_batch_size(trainer, speed.pick_batch_size(speed.step_runner(trainer), run.memory_gib))
        if run.compile:
            speed.compile_layers(trainer.model)
    trainable = log_sizes(trainer, args)
    adapter_dir = run_dir / "adapter"
    # set once training ended: a resume then only evaluates
    training = read_run(run_dir).get("trained") if (run_dir / "run.json").exists() else None
    if training and (adapter_dir / "adapter_model.safetensors").exists():
        from pricer.modeling import load_adapter_weights

        log.info("training ended at step %d in an earlier attempt: evaluating its adapter only", training["train_steps"])
        load_adapter_weights(trainer.model, adapter_dir)
    else:
        training = train_and_save(trainer, tokenizer, stopper, keeper, checkpoints_dir, adapter_dir)
        write_run(run_dir, trained=training)
        if stopper.signum is not None:  # came while the adapter was saved: it is, so a resume evaluates
            raise Interrupted(stopper.signum, training["train_steps"], evaluating=True)
    with RaiseOnSignal(training["train_steps"]):
        scores = evaluate_model(trainer.model, tokenizer, *data["test"], adapter_dir, data["train_prices"],
                                evaluation["top_k"], evaluation["batch_tokens"], title=meta["project_run_name"],
                                max_length=run.sft["max_length"])
        if "val" in data:
            scores |= score_validation(trainer.model, tokenizer, *data["val"], evaluation["top_k"],
                                       evaluation["batch_tokens"], run.sft["max_length"])
    return scores | training | {"trainable_params": trainable}


def train_and_save(trainer, tokenizer, stopper, keeper, checkpoints_dir: Path, adapter_dir: Path) -> dict:
    """Train (from the last complete checkpoint, if any) and save the final adapter; the run's
    training numbers. A signal stops training at a saved checkpoint (Interrupted); one that comes
    after the last step is held until the adapter is saved."""
    from pricer import trial
    from pricer.interrupt import Interrupted
    from pricer.resume import complete_checkpoints, drop_incomplete_checkpoints

    drop_incomplete_checkpoints(checkpoints_dir)
    last = complete_checkpoints(checkpoints_dir)[-1:] if checkpoints_dir.exists() else []
    if last:
        log.info("continuing from %s", last[0])
    stopper.install()
    try:
        try:
            result = trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
        finally:
            keeper.close()  # pushes queued checkpoints, however training ended
        if stopper.signum is not None and trainer.state.global_step < trainer.state.max_steps:
            raise Interrupted(stopper.signum, trainer.state.global_step)
        trial.raise_if_pruned()  # after the trainer's own shutdown: a pruned trial keeps its checkpoint
        trainer.model.save_pretrained(adapter_dir)  # the adapter only, a few MB
        tokenizer.save_pretrained(adapter_dir)
    finally:
        stopper.restore()
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
    from pricer.training import count_parameters

    trainable, total = count_parameters(trainer.model)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    log.info(
        "trainable params %s of %s (%.2f%%); effective batch %d = %d per device x %d accumulation x %d devices; "
        "<= %s tokens per step",
        f"{trainable:,}", f"{total:,}", 100 * trainable / total, batch, args.per_device_train_batch_size,
        args.gradient_accumulation_steps, args.world_size, f"{batch * args.max_length:,}",
    )
    return trainable


def write_card_and_push(run: RunConfig, run_dir: Path, meta: dict, config_yaml: str, metrics: dict) -> None:
    from pricer import hub
    from pricer.push import with_retries

    adapter_dir = run_dir / "adapter"
    (adapter_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (adapter_dir / "config.yaml").write_text(config_yaml)  # resolved: what the run really used
    dataset = run.data["path"] if run.data["data_files"] is None else "local files"
    repo_id = meta["repo_id"]
    card = hub.model_card(repo_id or meta["project_run_name"], run.model["pretrained_model_name_or_path"], dataset,
                          meta["run_name"], config_yaml, metrics)
    (adapter_dir / "README.md").write_text(card)
    if repo_id and with_retries(lambda: hub.push_final(repo_id, adapter_dir, run.hub["private"]), "final adapter",
                                run.hub["push_attempts"], run.hub["push_wait_s"]):
        write_run(run_dir, final_pushed=True)
        log.info("pushed to %s", repo_id)
    elif repo_id:
        log.error("the final push failed; the adapter is safe in %s: run `python -m pricer.push %s`", run_dir, run_dir)


def drop_unclaimed_dir(output_dir: Path) -> None:
    """Bad input leaves no run dir behind: remove what Hydra wrote there (.hydra/, train.log) unless a
    run was claimed in it (run.json); anything else in the dir stays."""
    if (output_dir / "run.json").exists():
        return
    import shutil

    shutil.rmtree(output_dir / ".hydra", ignore_errors=True)
    (output_dir / "train.log").unlink(missing_ok=True)
    try:
        output_dir.rmdir()
    except OSError:
        pass  # not empty: the user's own files


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry: bad input ends with one line naming the fix, not a traceback."""
    install_log_filters()  # first: importing transformers below already imports bitsandbytes
    from pricer.interrupt import Interrupted  # here, not at the top: --cfg job must not import torch

    try:
        return train(cfg)
    except (ConfigError, DataError, ResumeError, Interrupted) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweeper records the failed job and goes on
        if not isinstance(err, Interrupted):
            drop_unclaimed_dir(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(128 + err.signum if isinstance(err, Interrupted) else 2)


if __name__ == "__main__":
    main()
