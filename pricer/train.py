"""The one SFT entrypoint: python -m pricer.train lora=r8 hardware=t4

Reads top to bottom like the notebook it grew from: validate, name the run, load
the data, build the model, train, save, push, return the objective that a
--multirun sweeper minimises.
"""

import logging
import sys
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pricer.config import ConfigError, RunConfig, validate
from pricer.data import DataError

log = logging.getLogger("pricer")


def train(cfg: DictConfig) -> float:
    start = datetime.now()
    hydra_cfg = HydraConfig.get()
    run = validate(cfg, choices=dict(hydra_cfg.runtime.choices))  # fails here, before any download
    run_dir = Path(hydra_cfg.runtime.output_dir)

    from pricer import hub, naming, tracking

    run_name = naming.claim_run_name(start, Path(run.output_root) / ".run_names")
    project_run_name = naming.project_run_name(run.project, run_name)
    repo_id = None
    if run.hub["push"]:
        repo_id = naming.hub_repo_id(run.hub["hf_user"] or hub.account_name(), run.project, run_name)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = f"sweep-{Path(hydra_cfg.sweep.dir).name}" if multirun else None
    log.info("run %s -> %s (hub: %s)", project_run_name, run_dir, repo_id or "off")

    data = load_data(run)
    tokenizer, model = load_model(run)

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    report_to = tracking.start(
        run.tracking["backend"],
        run.tracking.get("project", run.project),
        project_run_name,
        group,
        OmegaConf.to_container(cfg, resolve=True) | {"run_name": run_name, "hub_repo": repo_id},
        str(run_dir),
        run.tracking.get("entity"),
        run.tracking.get("tags"),
    )
    failed = True
    try:
        metrics = fit(run, model, tokenizer, data, run_dir, project_run_name, report_to, repo_id)
        tracking.log_summary(run.tracking["backend"], metrics)
        write_card_and_push(run, run_dir, run_name, repo_id, config_yaml, metrics)
        failed = False
    finally:
        tracking.finish(run.tracking["backend"], failed)
    log.info("adapter: %s | logs: %s | config: %s", run_dir / "adapter", run_dir / "train.log", run_dir / ".hydra")
    return metrics[run.optimized_metric]


def load_data(run: RunConfig):
    from pricer.data import load_splits, to_prompt_completion

    splits = load_splits(run.data["path"], run.data["data_files"], run.data["revision"], run.data["max_train_samples"])
    log.info("data: %d train / %d test items from %s", len(splits["train"]), len(splits["test"]), run.data["path"])
    return {"train": to_prompt_completion(splits["train"]), "test": splits["test"]}


def load_model(run: RunConfig):
    from pricer import modeling

    model_cfg = run.model
    if model_cfg["build_tiny"]:
        modeling.ensure_tiny_model(model_cfg["pretrained_model_name_or_path"])
    tokenizer = modeling.load_tokenizer(
        model_cfg["pretrained_model_name_or_path"], model_cfg["revision"], model_cfg["trust_remote_code"]
    )
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


def fit(run: RunConfig, model, tokenizer, data, run_dir: Path, project_run_name: str, report_to, repo_id) -> dict:
    """Train with TRL, save the final adapter in the run dir; returns the run's metrics."""
    from pricer.modeling import build_lora_config
    from pricer.training import build_sft_config, build_trainer, count_parameters

    args = build_sft_config(
        run.sft,
        output_dir=str(run_dir / "checkpoints"),  # what every_save pushes: keep logs and W&B out
        run_name=project_run_name,
        report_to=report_to,
        seed=run.seed,
        use_cpu=run.accelerator == "cpu",
        hub_model_id=repo_id,
        hub_private_repo=run.hub["private"],
        hub_strategy=run.hub["hub_strategy"],
    )
    trainer = build_trainer(
        model, tokenizer, args, build_lora_config(run.lora), data["train"], callbacks=[], compute_dtype=run.compute_dtype
    )
    trainable, total = count_parameters(trainer.model)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    log.info(
        "trainable params %s of %s (%.2f%%); effective batch %d = %d per device x %d accumulation x %d devices; "
        "<= %s tokens per step",
        f"{trainable:,}", f"{total:,}", 100 * trainable / total, batch, args.per_device_train_batch_size,
        args.gradient_accumulation_steps, args.world_size, f"{batch * args.max_length:,}",
    )
    result = trainer.train()
    adapter_dir = run_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)  # the adapter only, a few MB
    tokenizer.save_pretrained(adapter_dir)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else float("nan"),
        "last_logged_loss": losses[-1] if losses else float("nan"),
        "train_steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime", float("nan")),
        "trainable_params": trainable,
    }


def write_card_and_push(run: RunConfig, run_dir: Path, run_name: str, repo_id, config_yaml: str, metrics) -> None:
    import json

    from pricer import hub

    adapter_dir = run_dir / "adapter"
    (adapter_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (adapter_dir / "config.yaml").write_text(config_yaml)  # resolved: what the run really used
    dataset = run.data["path"] if run.data["data_files"] is None else "local files"
    card = hub.model_card(repo_id or run_name, run.model["pretrained_model_name_or_path"], dataset, run_name,
                          config_yaml, metrics)
    (adapter_dir / "README.md").write_text(card)
    if repo_id:
        url = hub.push_final(repo_id, adapter_dir, run.hub["private"])
        log.info("pushed to %s", url)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry: bad input ends with one line naming the fix, not a traceback."""
    try:
        return train(cfg)
    except (ConfigError, DataError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweeper records the failed job and goes on
        sys.exit(2)


if __name__ == "__main__":
    main()
