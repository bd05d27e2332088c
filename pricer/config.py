"""Validate the composed config once, before any download or GPU allocation.

Hydra composes the YAML onto pricer.schema, so OmegaConf has already refused unknown keys and
wrong types; here the same schema is applied again (a config built another way gets the same
checks), then the rules a type cannot say: positive sizes, an objective pricer knows, the
library groups against the libraries (pricer.library_checks), this machine (a GPU, bf16), the
Hub and W&B names and credentials. Every later step takes plain arguments from the `RunConfig`
made here, so a bad value fails in seconds with one line naming the override to change, not
an hour into a run deep inside TRL.
"""

import typing
from dataclasses import dataclass, fields, is_dataclass
from types import UnionType
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from pricer.config_errors import ConfigError, library_errors_in_one_line
from pricer.library_checks import build_sft, check_lora, check_quant, check_sft
from pricer.objectives import OBJECTIVES
from pricer.schema import POSITIVE, TO_SFT, Data, Evaluation, Hardware, Hub, Model, Tracking, TrainConfig

Group = TypeVar("Group")


@dataclass(frozen=True)
class RunConfig:
    """What a run is given: pricer's groups typed, the libraries' groups as their keyword arguments."""

    project: str
    seed: int
    optimized_metric: str
    output_root: str
    resume: str | None  # a run dir, or auto
    resume_force: bool  # continue a run that cannot go on as it was (no checkpoint left, another number of ranks)
    model: Model
    data: Data
    hub: Hub
    tracking: Tracking
    evaluation: Evaluation
    hardware: Hardware  # its SFTConfig keys are in `sft` too, as SFTConfig takes them
    auto_batch_size: bool  # per_device_train_batch_size=auto: measure peak memory and fill hardware.memory_gib
    lora: dict[str, Any]  # peft.LoraConfig kwargs
    quant: dict[str, Any]  # transformers.BitsAndBytesConfig kwargs; empty: no quantization
    sft: dict[str, Any]  # trl.SFTConfig kwargs (training + optimizer + scheduler + hardware)


def validate(cfg: DictConfig, choices: dict[str, str] | None = None, check_machine: bool = True) -> RunConfig:
    """Check every group and return the run's values; `choices` are Hydra's picked presets.

    `check_machine=False` skips what depends on this machine (a GPU, a token), so a
    GPU preset can still be checked on a laptop or in CI.
    """
    choices = choices or {}
    typed = apply_schema(cfg)
    _check_positive(typed)
    if typed.optimized_metric not in OBJECTIVES:
        raise ConfigError(f"optimized_metric={typed.optimized_metric} is not one of {', '.join(OBJECTIVES)}")
    hardware = typed.hardware
    sft_hardware = {f.name: getattr(hardware, f.name) for f in fields(Hardware) if f.metadata.get(TO_SFT)}
    batch = hardware.per_device_train_batch_size
    if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0):
        raise ConfigError(f"hardware.per_device_train_batch_size={batch!r} must be a positive integer or auto")
    auto_batch_size = batch == "auto"
    if auto_batch_size:
        if hardware.accelerator != "cuda":
            raise ConfigError("per_device_train_batch_size=auto measures CUDA memory: give a number on hardware=cpu")
        sft_hardware["per_device_train_batch_size"] = 1  # replaced by the measured pick before training
    sft = {**typed.training, **typed.optimizer, **typed.scheduler, **sft_hardware}
    check_lora(typed.lora)
    check_quant(typed.quant)
    check_sft(sft, {"optimizer": typed.optimizer, "scheduler": typed.scheduler, "training": typed.training,
                    "hardware": sft_hardware})
    if not typed.data.path:
        raise ConfigError("data.path is empty: name a Hub dataset id or a format (json, parquet, csv) with data.data_files")
    _check_hardware(hardware, sft, choices, check_machine)
    _check_hub_names(typed.hub, typed.project)
    _check_tracking(typed.tracking)
    build_sft(sft)  # last: pricer's own messages above name the fix better than the library's
    if check_machine:
        _check_hub(typed.hub)
        _check_tracker_reachable(typed.tracking)
    return RunConfig(
        project=typed.project, seed=typed.seed, optimized_metric=typed.optimized_metric, output_root=typed.output_root,
        resume=typed.resume, resume_force=typed.resume_force, model=typed.model, data=typed.data, hub=typed.hub,
        tracking=typed.tracking, evaluation=typed.evaluation, hardware=hardware, auto_batch_size=auto_batch_size,
        lora=typed.lora, quant=typed.quant, sft=sft,
    )


def apply_schema(cfg: DictConfig | dict) -> TrainConfig:
    """The config as pricer.schema's objects, interpolations resolved; OmegaConf's refusals in one line."""
    with library_errors_in_one_line():
        # as plain values first: a `+key=` Hydra added to a typed node would pass a typed merge unseen
        plain = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), plain))


def _check_positive(typed: TrainConfig) -> None:
    """The schema's positive() fields: OmegaConf checks a value's type, not its range."""
    for group in fields(typed):
        if is_dataclass(values := getattr(typed, group.name)):
            _check_group_positive(group.name, values)


def _check_group_positive(name: str, values: Any) -> None:
    hints = typing.get_type_hints(type(values))
    for key in fields(values):
        value = getattr(values, key.name)
        if key.metadata.get(POSITIVE) and value is not None and value <= 0:
            union = typing.get_origin(hints[key.name]) in (typing.Union, UnionType)
            options = typing.get_args(hints[key.name]) if union else (hints[key.name],)
            wanted = "a positive integer" if int in options else "positive"
            raise ConfigError(f"{name}.{key.name}={value} must be {wanted}{' or null' if type(None) in options else ''}")


def _check_hardware(hw: Hardware, sft: dict, choices: dict[str, str], check_machine: bool) -> None:
    """Needs torch only to ask whether CUDA exists; allocates nothing on the GPU."""
    import torch

    preset = f"hardware={choices.get('hardware', hw.accelerator)}"
    wants_bf16 = sft.get("bf16") or hw.compute_dtype == "bfloat16"
    if wants_bf16 and choices.get("hardware") == "t4":
        raise ConfigError("hardware=t4 has no bf16: keep hardware.bf16=false hardware.fp16=true hardware.compute_dtype=float16")
    if check_machine and hw.accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{preset} needs a CUDA GPU and this machine has none: use hardware=cpu with model=tiny")
    if check_machine and wants_bf16 and hw.accelerator == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{preset}: this GPU has no bf16: use hardware=t4 (fp16)")
    if hw.accelerator == "cpu" and (sft.get("bf16") or sft.get("fp16")):
        raise ConfigError(f"{preset} trains in fp32: set hardware.bf16=false hardware.fp16=false")
    if hw.accelerator == "cpu" and str(sft.get("optim", "")).startswith("paged_"):
        raise ConfigError(f"optimizer.optim={sft['optim']} pages through CUDA memory: use optimizer=adamw_torch on {preset}")


def _check_hub_names(hub: Hub, project: str) -> None:
    """The repo `{hf_user}/{project}-{run name}` must be a name the Hub accepts: checked offline, so a
    bad one stops the run now instead of failing every push of a finished run."""
    from pricer.run_names import is_valid_repo_name

    if hub.hf_user is not None and not is_valid_repo_name(hub.hf_user):
        raise ConfigError(f"hub.hf_user={hub.hf_user!r} is not a Hub account or organisation name: letters, digits, '-', '_', "
                          "'.'; e.g. hub.hf_user=my-name (or leave it null for the token's account)")
    if not is_valid_repo_name(f"{project}-2024-09-13_13.04.39"):
        raise ConfigError(f"project={project!r} makes invalid Hub repo names: use letters, digits, '-', '_'")


def _check_hub(hub: Hub) -> None:
    if not hub.push:
        return
    from huggingface_hub import constants, get_token

    if not get_token():
        raise ConfigError("hub.push=true needs a Hugging Face token: set HF_TOKEN (or run `hf auth login`), or pass hub.push=false")
    if constants.HF_HUB_OFFLINE:  # every push would fail: five retries of the account lookup, then a wrong hint
        raise ConfigError("hub.push=true, but HF_HUB_OFFLINE=1 is set, so nothing can reach the Hub: unset HF_HUB_OFFLINE, "
                          "or pass hub.push=false (push later with `python -m pricer.push RUN_DIR`)")


def _check_tracking(tracking: Tracking) -> None:
    """A W&B project name W&B refuses (it said so only after the model load)."""
    from pricer.tracking import project_problem

    if tracking.backend == "wandb" and tracking.project is None:
        raise ConfigError("tracking.project is missing: add it, e.g. tracking.project=pricer (tracking=wandb logs to a W&B project)")
    if tracking.backend == "wandb":
        problem = project_problem(tracking.project)
        if problem:
            raise ConfigError(f"tracking.project={tracking.project!r} {problem}: name a W&B project, e.g. tracking.project=pricer")


def _check_tracker_reachable(tracking: Tracking) -> None:
    """The W&B key and server, asked before the model loads: not after it, with a 120 s timeout."""
    from pricer.tracking import preflight

    problem = preflight(str(tracking.backend))
    if problem:
        raise ConfigError(problem)


def as_group(cls: type[Group], values: dict, name: str) -> Group:
    """One group of a config a run saved (pricer.evaluate reads it back) as its schema object, refused in one line."""
    try:
        with library_errors_in_one_line():
            group = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
    except ConfigError as err:
        raise ConfigError(f"{name}.{err}") from None
    _check_group_positive(name, group)
    return group
