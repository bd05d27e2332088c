"""The config's schema: typed dataclasses that Hydra composes the YAML onto.

Registered in Hydra's ConfigStore as `pricer_schema`, the first entry of conf/train.yaml's
defaults list, so OmegaConf itself refuses an unknown key or a value of the wrong type while
Hydra composes (in a preset file or on the command line), and `validate` hands these same
objects down to the run. No defaults here (MISSING): conf/ holds every value, so a key a file
forgot is an error naming it, not a silent second default. The library groups (lora, quant,
optimizer, scheduler, training) stay open dicts: their keys are the library's own fields and
pricer.library_checks checks them against LoraConfig, BitsAndBytesConfig and SFTConfig.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

POSITIVE = "positive"  # field metadata: the value must be > 0 (null passes where the type allows it)
TO_SFT = "SFTConfig field"  # field metadata: a hardware key that goes to trl.SFTConfig, not to pricer


def positive() -> Any:
    return field(default=MISSING, metadata={POSITIVE: True})


def to_sft() -> Any:
    return field(default=MISSING, metadata={TO_SFT: True})


class Choice(str, Enum):
    """A key with a fixed set of values (OmegaConf refuses any other); a str, so the run compares,
    formats and serialises a member as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Accelerator(Choice):
    cuda = "cuda"
    cpu = "cpu"


class ComputeDtype(Choice):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class HubStrategy(Choice):
    every_save = "every_save"  # push each checkpoint as it is saved
    end = "end"  # push the final adapter only


class Backend(Choice):
    wandb = "wandb"
    none = "none"


@dataclass
class Model:
    pretrained_model_name_or_path: str = MISSING
    revision: str | None = MISSING
    trust_remote_code: bool = MISSING
    attn_implementation: str = MISSING
    build_tiny: bool = MISSING


@dataclass
class Data:
    path: str = MISSING
    revision: str | None = MISSING
    data_files: dict[str, Any] | None = MISSING
    max_train_samples: int | None = positive()


@dataclass
class Hub:
    push: bool = MISSING
    hf_user: str | None = MISSING
    private: bool = MISSING
    hub_strategy: HubStrategy = MISSING
    push_attempts: int = positive()
    push_wait_s: float = MISSING


@dataclass
class Tracking:
    """project, entity and tags are W&B's: tracking=none sets them null."""

    backend: Backend = MISSING
    project: str | None = MISSING
    entity: str | None = MISSING
    tags: list[str] | None = MISSING


@dataclass
class Evaluation:
    test_items: int = positive()
    top_k: int = positive()
    batch_tokens: int = positive()
    eval_steps: int | None = positive()  # null: no evaluation during training
    val_items: int = positive()


@dataclass
class Hardware:
    """Every preset sets every key, so none inherits another card's batch or dtype by accident.
    The to_sft() keys go to SFTConfig (and are checked against it too); the rest are pricer's."""

    accelerator: Accelerator = MISSING
    memory_gib: float = positive()
    compute_dtype: ComputeDtype = MISSING
    liger: bool = MISSING  # Liger's fused kernels
    compile: bool = MISSING  # torch.compile of the decoder layers
    lean_4bit: bool = MISSING  # 4-bit linears as one dequantize and one matmul in training (pricer.frozen4bit)
    bf16: bool = to_sft()
    fp16: bool = to_sft()
    per_device_train_batch_size: Any = to_sft()  # a positive integer, or auto: measured to fill memory_gib
    gradient_checkpointing: bool = to_sft()
    dataloader_num_workers: int = to_sft()


@dataclass
class TrainConfig:
    """The composed config's top level (conf/train.yaml and its groups)."""

    project: str = MISSING
    seed: int = MISSING
    optimized_metric: str = MISSING  # one of pricer.objectives.OBJECTIVES
    output_root: str = MISSING
    resume: str | None = MISSING  # a run dir, or auto
    resume_force: bool = MISSING
    model: Model = MISSING
    data: Data = MISSING
    hub: Hub = MISSING
    tracking: Tracking = MISSING
    evaluation: Evaluation = MISSING
    hardware: Hardware = MISSING
    lora: dict[str, Any] = MISSING  # peft.LoraConfig
    quant: dict[str, Any] = MISSING  # transformers.BitsAndBytesConfig
    optimizer: dict[str, Any] = MISSING  # trl.SFTConfig, as are the next two
    scheduler: dict[str, Any] = MISSING
    training: dict[str, Any] = MISSING


SCHEMA_NAME = "pricer_schema"


def register() -> None:
    """Store the schema where conf/train.yaml's defaults list finds it. Called on import of
    pricer's Hydra plugin package (hydra_plugins/pricer_searchpath), which Hydra imports before
    it composes any config: @hydra.main and the compose API alike."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)
