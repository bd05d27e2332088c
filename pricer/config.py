"""Validate the composed config once, before any download or GPU allocation.

Every later step takes plain arguments from the `RunConfig` made here, so a bad
value fails in seconds with a message naming the override to change, not an hour
into a run deep inside TRL.
"""

import difflib
import typing
from dataclasses import dataclass, fields
from types import UnionType
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys of the `hardware` group that are pricer's own; the rest go to SFTConfig.
HARDWARE_KEYS = ("accelerator", "memory_gib", "compute_dtype", "liger", "compile", "lean_4bit")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
SCORES = ("price_error", "rmsle", "median_error", "hit_rate")
# val/: the validation slice held out of the train split, for sweeps; test/: the course's report
OBJECTIVES = (*(f"val/{s}" for s in SCORES), *(f"test/{s}" for s in SCORES), "train_loss")
HIGHER_IS_BETTER = ("val/hit_rate", "test/hit_rate")  # the other objectives are errors and losses
REPORTED_SCORES = ("val/price_error", "test/price_error", "test/hit_rate")  # a trial's context beside its objective
# The prompt's fixed words ("How much does this cost to the nearest dollar?" ... "Price is $") take
# ~16 tokens with Llama 3's tokenizer and the price ~4 more: a shorter max_length cuts every item
# before its price, so nothing would be learned.
MIN_MAX_LENGTH = 24
QUANT_TYPES = ("nf4", "fp4")  # bitsandbytes' 4-bit data types


NONE = type(None)
# pricer's own groups (the others are checked against the library's fields): key -> allowed types.
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "": {"project": (str,), "seed": (int,), "optimized_metric": (str,), "output_root": (str,), "resume": (str, NONE)},
    "model": {
        "pretrained_model_name_or_path": (str,), "revision": (str, NONE), "trust_remote_code": (bool,),
        "attn_implementation": (str,), "build_tiny": (bool,),
    },
    "data": {"path": (str,), "revision": (str, NONE), "data_files": (dict, NONE), "max_train_samples": (int, NONE)},
    "hub": {
        "push": (bool,), "hf_user": (str, NONE), "private": (bool,), "hub_strategy": (str,),
        "push_attempts": (int,), "push_wait_s": (int, float),
    },
    "tracking": {"backend": (str,), "project": (str,), "entity": (str, NONE), "tags": (list,)},
    "evaluation": {
        "test_items": (int,), "top_k": (int,), "batch_tokens": (int,), "eval_steps": (int, NONE), "val_items": (int,),
    },
    "hardware": {
        "accelerator": (str,), "memory_gib": (int, float), "compute_dtype": (str,), "bf16": (bool,), "fp16": (bool,),
        "per_device_train_batch_size": (int, str), "gradient_checkpointing": (bool,), "liger": (bool,), "compile": (bool,),
        "lean_4bit": (bool,), "dataloader_num_workers": (int,),
    },
}
LIBRARY_GROUPS = ("lora", "quant", "optimizer", "scheduler", "training")
POSITIVE = [("evaluation", "test_items"), ("evaluation", "top_k"), ("evaluation", "batch_tokens"),
            ("evaluation", "val_items"), ("hub", "push_attempts"), ("hardware", "memory_gib")]
CHOICES = {
    ("hub", "hub_strategy"): ("every_save", "end"),
    ("tracking", "backend"): ("wandb", "none"),
    ("hardware", "compute_dtype"): COMPUTE_DTYPES,
    ("hardware", "accelerator"): ("cuda", "cpu"),
}


def sweep_objective(metric: str) -> str:
    """What a sweep's runs return for `optimized_metric`: a test/ score's validation twin, so no
    sampler or pruner ever selects on the test items (they stay the report)."""
    return "val/" + metric[len("test/"):] if metric.startswith("test/") else metric


class ConfigError(ValueError):
    """A one-line, user-facing error: which key is wrong and the override that fixes it."""


@dataclass(frozen=True)
class RunConfig:
    project: str
    seed: int
    optimized_metric: str
    output_root: str
    resume: str | None
    model: dict[str, Any]
    lora: dict[str, Any]  # peft.LoraConfig kwargs
    quant: dict[str, Any]  # transformers.BitsAndBytesConfig kwargs; empty: no quantization
    sft: dict[str, Any]  # trl.SFTConfig kwargs (training + optimizer + scheduler + hardware)
    accelerator: str
    compute_dtype: str
    memory_gib: float
    liger: bool  # Liger's fused kernels (pricer.speed)
    compile: bool  # torch.compile of the decoder layers
    lean_4bit: bool  # 4-bit linears as one dequantize and one matmul in training (pricer.frozen4bit)
    auto_batch_size: bool  # measure peak memory and fill memory_gib (pricer.speed.pick_batch_size)
    data: dict[str, Any]
    hub: dict[str, Any]
    tracking: dict[str, Any]
    evaluation: dict[str, Any]


def _check_known(group: str, given: dict, known: set[str]) -> None:
    prefix = f"{group}." if group else ""
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}{key} is not a known key{hint}: remove it or fix its name")


def _check_schema(plain: dict) -> None:
    """Unknown keys (with the close name), types and fixed choices of pricer's own groups."""
    _check_known("", {k: v for k, v in plain.items() if k not in SCHEMA and k not in LIBRARY_GROUPS},
                 set(SCHEMA) | set(LIBRARY_GROUPS) | set(SCHEMA[""]))
    for group, keys in SCHEMA.items():
        values = plain if group == "" else plain[group]
        if group:
            _check_known(group, values, set(keys))
        for key, types in keys.items():
            name = f"{group}.{key}" if group else key
            if key not in values and group == "tracking":
                continue  # tracking=none has nothing but its backend
            if key not in values:
                raise ConfigError(f"{name} is missing: add it to the config or pass +{name}=...")
            value = values[key]
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                wanted = " or ".join("null" if t is NONE else t.__name__ for t in types)
                raise ConfigError(f"{name}={value!r} must be {wanted}")
            if (group, key) in POSITIVE and value <= 0:
                raise ConfigError(f"{name}={value} must be positive")
            if (group, key) == ("evaluation", "eval_steps") and value is not None and value <= 0:
                raise ConfigError(f"{name}={value} must be a positive integer or null (no evaluation during training)")
            allowed = CHOICES.get((group, key))
            if allowed and value not in allowed:
                raise ConfigError(f"{name}={value} is not one of {', '.join(allowed)}")


def _check_annotation(name: str, value: Any, annotation: Any) -> None:
    """A value against the library field's own annotation: numbers, integers, bools, Literal choices.

    Binding to the library's signature (torchtune's habit) instead of a copy of it: LoraConfig and
    SFTConfig accept a wrong type or choice at construction and fail deep inside training. Types
    pricer cannot read (enums, nested unions) are left to the library."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}={value} is not one of {', '.join(map(str, args))}")
        return
    if origin in (typing.Union, UnionType):
        if value is None and type(None) in args:
            return
        others = [a for a in args if a is not type(None)]
        if len(others) != 1:
            return
        annotation = others[0]
    if annotation is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name}={value!r} must be a number")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")


def field_types(cls: type) -> dict[str, Any]:
    """A library dataclass's field annotations, resolved (peft writes them as strings)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation naming something not importable: keep what is readable
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in fields(cls)}


def _check_fields(group: str, values: dict, types_of: dict[str, Any]) -> None:
    for key, value in values.items():
        if key in types_of:
            _check_annotation(f"{group}.{key}", value, types_of[key])


def _check_lora(lora: dict) -> None:
    from peft import LoraConfig

    _check_known("lora", lora, {f.name for f in fields(LoraConfig)})
    _check_fields("lora", lora, field_types(LoraConfig))
    if lora.get("target_modules") in ([], ""):
        raise ConfigError("lora.target_modules is empty: name the layers to adapt, e.g. [q_proj, v_proj] or all-linear")
    if not isinstance(lora.get("r"), int) or lora["r"] <= 0:
        raise ConfigError(f"lora.r={lora.get('r')} must be a positive integer: use e.g. lora=r8 or lora.r=16")
    if not isinstance(lora.get("lora_alpha"), (int, float)) or lora["lora_alpha"] <= 0:
        raise ConfigError(f"lora.lora_alpha={lora.get('lora_alpha')} must be positive: use 2 x lora.r")
    dropout = lora.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora.lora_dropout={dropout} must lie in [0, 1): use e.g. lora.lora_dropout=0.1")


def _check_quant(quant: dict) -> None:
    import inspect

    from transformers import BitsAndBytesConfig

    _check_known("quant", quant, set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"})
    if quant.get("load_in_4bit") and quant.get("load_in_8bit"):
        raise ConfigError("quant sets both load_in_4bit and load_in_8bit: pick quant=nf4 or quant=int8")
    dtype = quant.get("bnb_4bit_compute_dtype")
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"quant.bnb_4bit_compute_dtype={dtype} is not one of {', '.join(COMPUTE_DTYPES)}")
    if quant.get("load_in_4bit") and quant.get("bnb_4bit_quant_type", "fp4") not in QUANT_TYPES:
        raise ConfigError(f"quant.bnb_4bit_quant_type={quant['bnb_4bit_quant_type']} is not one of {', '.join(QUANT_TYPES)}: "
                          "use quant=nf4")
    try:  # the library's own checks (types of its flags), as one line
        BitsAndBytesConfig(**quant)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"quant: {str(err).splitlines()[0]}: fix the quant group (e.g. quant=nf4)") from None


def _check_sft(sft: dict, groups: dict[str, dict]) -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames
    from trl import SFTConfig

    library = field_types(SFTConfig)
    for group in ("optimizer", "scheduler", "training"):
        _check_known(group, groups[group], set(library))
        _check_fields(group, groups[group], library)
    _check_fields("hardware", {k: v for k, v in groups["hardware"].items() if k != "per_device_train_batch_size"}, library)
    for key in ("logging_steps", "save_steps"):
        if not sft.get(key, 1) > 0:
            raise ConfigError(f"training.{key}={sft[key]} must be positive: every N steps, e.g. training.{key}=50")
    epochs, max_steps = sft.get("num_train_epochs", 1), sft.get("max_steps", -1)
    if epochs < 0:
        raise ConfigError(f"training.num_train_epochs={epochs} must be >= 0")
    if max_steps == 0 or max_steps < 0 and epochs == 0:
        raise ConfigError(f"training.max_steps={max_steps} and training.num_train_epochs={epochs} train nothing: "
                          "set training.num_train_epochs=1 or training.max_steps=N > 0")
    optimizers = sorted(o.value for o in OptimizerNames)
    if sft.get("optim") not in optimizers:
        close = difflib.get_close_matches(str(sft.get("optim")), optimizers, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"optimizer.optim={sft.get('optim')} is not a known optimizer{hint}: use e.g. optimizer=adamw_torch")
    schedulers = sorted(s.value for s in SchedulerType)
    if sft.get("lr_scheduler_type") not in schedulers:
        close = difflib.get_close_matches(str(sft.get("lr_scheduler_type")), schedulers, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"scheduler.lr_scheduler_type={sft.get('lr_scheduler_type')} is not a known scheduler{hint}: use e.g. scheduler=cosine"
        )
    if not sft.get("learning_rate", 0) > 0:
        raise ConfigError(f"optimizer.learning_rate={sft.get('learning_rate')} must be > 0: use e.g. 1e-4")
    if not 0 <= sft.get("warmup_steps", 0):
        raise ConfigError(f"scheduler.warmup_steps={sft['warmup_steps']} must be >= 0 (a ratio below 1, steps above)")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
        if not isinstance(sft.get(key), int) or sft[key] <= 0:
            raise ConfigError(f"{key}={sft.get(key)} must be a positive integer")
    if sft["max_length"] < MIN_MAX_LENGTH:
        raise ConfigError(f"training.max_length={sft['max_length']} is shorter than the prompt's fixed words and the price "
                          f"(~20 tokens): use at least {MIN_MAX_LENGTH}, the notebook's 182")
    if sft.get("bf16") and sft.get("fp16"):
        raise ConfigError("hardware sets both bf16 and fp16: keep one (hardware.fp16=false)")


def _check_hardware(hw: dict, sft: dict, choices: dict[str, str], check_machine: bool) -> None:
    """Needs torch only to ask whether CUDA exists; allocates nothing on the GPU."""
    import torch

    preset = f"hardware={choices.get('hardware', hw['accelerator'])}"
    wants_bf16 = sft.get("bf16") or hw["compute_dtype"] == "bfloat16"
    if wants_bf16 and choices.get("hardware") == "t4":
        raise ConfigError("hardware=t4 has no bf16: keep hardware.bf16=false hardware.fp16=true hardware.compute_dtype=float16")
    if check_machine and hw["accelerator"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{preset} needs a CUDA GPU and this machine has none: use hardware=cpu with model=tiny")
    if check_machine and wants_bf16 and hw["accelerator"] == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{preset}: this GPU has no bf16: use hardware=t4 (fp16)")
    if hw["accelerator"] == "cpu" and (sft.get("bf16") or sft.get("fp16")):
        raise ConfigError(f"{preset} trains in fp32: set hardware.bf16=false hardware.fp16=false")
    if hw["accelerator"] == "cpu" and str(sft.get("optim", "")).startswith("paged_"):
        raise ConfigError(f"optimizer.optim={sft['optim']} pages through CUDA memory: use optimizer=adamw_torch on {preset}")


def _check_hub_names(hub: dict, project: str) -> None:
    """The repo `{hf_user}/{project}-{run name}` must be a name the Hub accepts: checked offline, so a
    bad one stops the run now instead of failing every push of a finished run."""
    from pricer.naming import is_valid_repo_name

    user = hub.get("hf_user")
    if user is not None and not is_valid_repo_name(str(user)):
        raise ConfigError(f"hub.hf_user={user!r} is not a Hub account or organisation name: letters, digits, '-', '_', "
                          "'.'; e.g. hub.hf_user=my-name (or leave it null for the token's account)")
    if not is_valid_repo_name(f"{project}-2024-09-13_13.04.39"):
        raise ConfigError(f"project={project!r} makes invalid Hub repo names: use letters, digits, '-', '_'")


def _check_hub(hub: dict) -> None:
    if hub.get("push"):
        from huggingface_hub import get_token

        if not get_token():
            raise ConfigError(
                "hub.push=true needs a Hugging Face token: set HF_TOKEN (or run `hf auth login`), or pass hub.push=false"
            )


def _check_data(data: dict) -> None:
    if not data.get("path"):
        raise ConfigError("data.path is empty: name a Hub dataset id or a format (json, parquet, csv) with data.data_files")
    limit = data.get("max_train_samples")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"data.max_train_samples={limit} must be a positive integer or null")


def validate(cfg: DictConfig, choices: dict[str, str] | None = None, check_machine: bool = True) -> RunConfig:
    """Check every group and return plain values; `choices` are Hydra's picked presets.

    `check_machine=False` skips what depends on this machine (a GPU, a token), so a
    GPU preset can still be checked on a laptop or in CI.
    """
    choices = choices or {}
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # a ??? left unset, or an interpolation that fails
        raise ConfigError(f"{type(err).__name__}: {str(err).splitlines()[0]}: set the key on the command line") from None
    _check_schema(plain)
    hardware = dict(plain["hardware"])
    hw = {key: hardware.pop(key) for key in HARDWARE_KEYS}
    auto_batch_size = hardware["per_device_train_batch_size"] == "auto"
    if auto_batch_size:
        if hw["accelerator"] != "cuda":
            raise ConfigError("per_device_train_batch_size=auto measures CUDA memory: give a number on hardware=cpu")
        hardware["per_device_train_batch_size"] = 1  # replaced by the measured pick before training
    sft = {**plain["training"], **plain["optimizer"], **plain["scheduler"], **hardware}
    if plain["optimized_metric"] not in OBJECTIVES:
        raise ConfigError(f"optimized_metric={plain['optimized_metric']} is not one of {', '.join(OBJECTIVES)}")
    _check_lora(plain["lora"])
    _check_quant(plain["quant"])
    _check_sft(sft, plain)
    _check_data(plain["data"])
    _check_hardware(hw, sft, choices, check_machine)
    _check_hub_names(plain["hub"], plain["project"])
    if check_machine:
        _check_hub(plain["hub"])
    return RunConfig(
        project=plain["project"],
        seed=plain["seed"],
        optimized_metric=plain["optimized_metric"],
        output_root=plain["output_root"],
        resume=plain["resume"],
        model=plain["model"],
        lora=plain["lora"],
        quant=plain["quant"],
        sft=sft,
        accelerator=hw["accelerator"],
        compute_dtype=hw["compute_dtype"],
        memory_gib=hw["memory_gib"],
        liger=hw["liger"],
        compile=hw["compile"],
        lean_4bit=hw["lean_4bit"],
        auto_batch_size=auto_batch_size,
        data=plain["data"],
        hub=plain["hub"],
        tracking=plain["tracking"],
        evaluation=plain["evaluation"],
    )

