"""Validate the composed config once, before any download or GPU allocation.

Every later step takes plain arguments from the `RunConfig` made here, so a bad
value fails in seconds with a message naming the override to change, not an hour
into a run deep inside TRL.
"""

import difflib
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf

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


class Mark(str):
    """A note on a schema field, read by `_check_value` from `Annotated[type, MARK]`."""


POSITIVE = Mark("positive")  # the value must be > 0; null passes where the type allows it
TO_SFT = Mark("SFTConfig field")  # a hardware key that goes to trl.SFTConfig, not to pricer


# pricer's own groups, typed. No defaults here: conf/ holds every value, so a key a file
# forgot is an error naming it, not a silent second default.
@dataclass(frozen=True)
class Model:
    pretrained_model_name_or_path: str
    revision: str | None
    trust_remote_code: bool
    attn_implementation: str
    build_tiny: bool


@dataclass(frozen=True)
class Data:
    path: str
    revision: str | None
    data_files: dict | None
    max_train_samples: Annotated[int, POSITIVE] | None


@dataclass(frozen=True)
class Hub:
    push: bool
    hf_user: str | None
    private: bool
    hub_strategy: Literal["every_save", "end"]
    push_attempts: Annotated[int, POSITIVE]
    push_wait_s: float


@dataclass(frozen=True)
class WandbTracking:
    backend: Literal["wandb"]
    project: str
    entity: str | None
    tags: list


@dataclass(frozen=True)
class NoTracking:
    """tracking=none has nothing but its backend."""

    backend: Literal["none"]


@dataclass(frozen=True)
class Evaluation:
    test_items: Annotated[int, POSITIVE]
    top_k: Annotated[int, POSITIVE]
    batch_tokens: Annotated[int, POSITIVE]
    eval_steps: Annotated[int, POSITIVE] | None  # null: no evaluation during training
    val_items: Annotated[int, POSITIVE]


@dataclass(frozen=True)
class Hardware:
    """Every preset sets every key, so none inherits another card's batch or dtype by accident.
    The TO_SFT keys go to SFTConfig (and are checked against it too); the rest are pricer's."""

    accelerator: Literal["cuda", "cpu"]
    memory_gib: Annotated[float, POSITIVE]
    compute_dtype: Literal[COMPUTE_DTYPES]
    liger: bool
    compile: bool
    lean_4bit: bool
    bf16: Annotated[bool, TO_SFT]
    fp16: Annotated[bool, TO_SFT]
    per_device_train_batch_size: Annotated[int | Literal["auto"], TO_SFT]  # auto: pricer.batch_size measures it
    gradient_checkpointing: Annotated[bool, TO_SFT]
    dataloader_num_workers: Annotated[int, TO_SFT]


@dataclass(frozen=True)
class Config:
    """The composed config's top level. The library groups are plain dicts here: their keys are
    checked against the library's own fields (`_check_lora`, `_check_quant`, `_check_sft`)."""

    project: str
    seed: int
    optimized_metric: Literal[OBJECTIVES]
    output_root: str
    resume: str | None  # a run dir, or auto
    resume_force: bool
    model: Model
    data: Data
    hub: Hub
    tracking: WandbTracking | NoTracking  # the one whose backend matches
    evaluation: Evaluation
    hardware: Hardware
    lora: dict  # peft.LoraConfig
    quant: dict  # transformers.BitsAndBytesConfig
    optimizer: dict  # trl.SFTConfig, as are the next two
    scheduler: dict
    training: dict


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def preset_notes(choices: dict[str, str], conf_dir: Path = CONF_DIR) -> list[str]:
    """One line per chosen preset that also set another group through its defaults list, e.g.
    "hardware=h100 also sets optimizer=adamw_torch_fused": a run logs these first, so a group
    the user never named does not change silently. Only what took effect (Hydra's final
    `choices` agree); an `optimizer=...` on the command line wins and is no surprise."""
    notes = []
    for group, option in choices.items():
        if not option or group.startswith("hydra"):
            continue
        sets = {g: o for g, o in preset_overrides(group, option, conf_dir).items() if choices.get(g) == o}
        if sets:
            notes.append(f"{group}={option} also sets " + ", ".join(f"{g}={o}" for g, o in sets.items()))
    return notes


def preset_overrides(group: str, option: str, conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """The other groups `conf/{group}/{option}.yaml` picks in its defaults list (`override
    /optimizer@...: adamw_torch_fused`), through the same group's files it extends (`- a100_notebook`)."""
    import yaml

    path = conf_dir / group / f"{option}.yaml"
    if not path.is_file():  # a preset from another search path (sweeps/): not ours to read
        return {}
    found: dict[str, str] = {}
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            found |= preset_overrides(group, entry, conf_dir)
        elif isinstance(entry, dict):
            for key, value in entry.items():
                name = key.removeprefix("override ").removeprefix("optional ").strip()
                if name.startswith("/") and value is not None:
                    found[name[1:].split("@")[0]] = str(value)
    return found


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
    resume_force: bool  # continue a run that cannot go on as it was (no checkpoint left, another number of ranks)
    model: dict[str, Any]
    lora: dict[str, Any]  # peft.LoraConfig kwargs
    quant: dict[str, Any]  # transformers.BitsAndBytesConfig kwargs; empty: no quantization
    sft: dict[str, Any]  # trl.SFTConfig kwargs (training + optimizer + scheduler + hardware)
    accelerator: str
    compute_dtype: str
    memory_gib: float
    liger: bool  # Liger's fused kernels (pricer.speedups)
    compile: bool  # torch.compile of the decoder layers
    lean_4bit: bool  # 4-bit linears as one dequantize and one matmul in training (pricer.frozen4bit)
    auto_batch_size: bool  # measure peak memory and fill memory_gib (pricer.batch_size.pick_batch_size)
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


def schema_fields(cls: type) -> dict[str, Any]:
    """A schema dataclass's keys and their types, Annotated marks kept."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in fields(cls)}


def _marks(annotation: Any) -> tuple[Any, tuple]:
    """The type inside `Annotated[type, *marks]`, and the marks."""
    if typing.get_origin(annotation) is Annotated:
        return annotation.__origin__, annotation.__metadata__
    return annotation, ()


def _check_group(name: str, values: Any, cls: type) -> None:
    """Unknown keys (with the close name), missing keys and each value's type, for one dataclass."""
    if not isinstance(values, dict):
        raise ConfigError(f"{name}={values!r} must be a group of keys: pick a preset, e.g. {name}=NAME")
    schema = schema_fields(cls)
    _check_known(name, values, set(schema))
    for key, annotation in schema.items():
        full = f"{name}.{key}" if name else key
        if key not in values:
            raise ConfigError(f"{full} is missing: add it to the config or pass +{full}=...")
        _check_value(full, values[key], annotation)


def _check_value(name: str, value: Any, annotation: Any) -> None:
    """One value against its schema type: a dataclass (a group), a union of dataclasses told apart
    by their first field's Literal (tracking.backend), or a plain type, union or Literal."""
    annotation, marks = _marks(annotation)
    if is_dataclass(annotation):
        _check_group(name, value, annotation)
        return
    args = typing.get_args(annotation)
    if args and all(is_dataclass(a) for a in args):
        _check_group(name, value, _tagged_member(name, value, args))
        return
    options = list(args) if typing.get_origin(annotation) in (typing.Union, UnionType) else [annotation]
    for option in options:
        option, inner = _marks(option)
        if _matches(value, option):
            if value is not None and POSITIVE in marks + inner and value <= 0:
                wanted = "a positive integer" if option is int else "positive"
                raise ConfigError(f"{name}={value} must be {wanted}{' or null' if type(None) in options else ''}")
            return
    literals = [a for o in options if typing.get_origin(_marks(o)[0]) is Literal for a in typing.get_args(_marks(o)[0])]
    if len(options) == 1 and literals:
        raise ConfigError(f"{name}={value} is not one of {', '.join(map(str, literals))}")
    raise ConfigError(f"{name}={value!r} must be {' or '.join(_type_name(o) for o in options)}")


def _tagged_member(name: str, value: Any, members: tuple[type, ...]) -> type:
    """The member of a union of dataclasses whose first field (its tag) holds this value's tag."""
    tag = fields(members[0])[0].name
    tags = {typing.get_args(schema_fields(m)[tag])[0]: m for m in members}
    if not isinstance(value, dict) or tag not in value:
        raise ConfigError(f"{name}.{tag} is missing: add it to the config or pass +{name}.{tag}=...")
    if value[tag] not in tags:
        raise ConfigError(f"{name}.{tag}={value[tag]} is not one of {', '.join(map(str, tags))}")
    return tags[value[tag]]


def _matches(value: Any, annotation: Any) -> bool:
    """isinstance with YAML's numbers: an int is a float, a bool is neither."""
    annotation = _marks(annotation)[0]
    if annotation is None or annotation is type(None):
        return value is None
    if typing.get_origin(annotation) is Literal:
        return value in typing.get_args(annotation)
    if isinstance(value, bool):
        return annotation is bool
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, typing.get_origin(annotation) or annotation)


def _type_name(annotation: Any) -> str:
    annotation = _marks(annotation)[0]
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is Literal:
        return " or ".join(map(str, typing.get_args(annotation)))
    return getattr(typing.get_origin(annotation) or annotation, "__name__", str(annotation))


# Keys of the `hardware` group that are pricer's own; the rest go to SFTConfig.
HARDWARE_KEYS = tuple(key for key, hint in schema_fields(Hardware).items() if TO_SFT not in _marks(hint)[1])


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
    try:  # the library's own checks (its __post_init__), as one line; instant and offline
        LoraConfig(**lora)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"lora: {_first_line(err)}: fix the lora group (e.g. lora=r16)") from None


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
        raise ConfigError(f"quant: {_first_line(err)}: fix the quant group (e.g. quant=nf4)") from None


def _first_line(err: Exception) -> str:
    """An error's first line without its full stop: pricer's message goes on after it."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(". ")


def _build_sft(sft: dict) -> None:
    """SFTConfig's own __post_init__ checks (choices of its enums, flags that exclude each other), as
    one line. use_cpu=True: bf16 is a question about this machine, which _check_hardware asks; the
    object is built in ~20 ms, writes nothing to output_dir and is thrown away."""
    import tempfile

    from trl import SFTConfig

    with tempfile.TemporaryDirectory() as unused:
        try:
            SFTConfig(**{**sft, "output_dir": unused, "use_cpu": True, "report_to": [], "push_to_hub": False})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"training/optimizer/scheduler/hardware: SFTConfig refused them: {_first_line(err)}") from None


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
    from pricer.run_names import is_valid_repo_name

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
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # every push would fail: five retries of the account lookup, then a wrong hint
            raise ConfigError("hub.push=true, but HF_HUB_OFFLINE=1 is set, so nothing can reach the Hub: unset HF_HUB_OFFLINE, "
                              "or pass hub.push=false (push later with `python -m pricer.push RUN_DIR`)")


def _check_tracking(tracking: dict) -> None:
    """A W&B project name W&B refuses (it said so only after the model load)."""
    from pricer.tracking import project_problem

    if tracking.get("backend") == "wandb":
        problem = project_problem(tracking.get("project"))
        if problem:
            raise ConfigError(f"tracking.project={tracking.get('project')!r} {problem}: name a W&B project, e.g. "
                              "tracking.project=pricer")


def _check_tracker_reachable(tracking: dict) -> None:
    """The W&B key and server, asked before the model loads: not after it, with a 120 s timeout."""
    from pricer.tracking import preflight

    problem = preflight(tracking["backend"])
    if problem:
        raise ConfigError(problem)


def check_repeated_overrides(overrides: list[str]) -> None:
    """One key given twice on the command line (`lora=r8 lora=r64`): Hydra silently takes the last."""
    seen: dict[str, str] = {}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+")
        if "=" not in override or key.startswith("~"):
            continue
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]}, {override}): Hydra would take the last silently: "
                              "keep one (a sweep over both: --multirun " + f"{key}={seen[key].split('=', 1)[1]},"
                              f"{override.split('=', 1)[1]})")
        seen[key] = override


def _check_data(data: dict) -> None:
    if not data.get("path"):
        raise ConfigError("data.path is empty: name a Hub dataset id or a format (json, parquet, csv) with data.data_files")


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
    _check_group("", plain, Config)
    hardware = dict(plain["hardware"])
    hw = {key: hardware.pop(key) for key in HARDWARE_KEYS}
    auto_batch_size = hardware["per_device_train_batch_size"] == "auto"
    if auto_batch_size:
        if hw["accelerator"] != "cuda":
            raise ConfigError("per_device_train_batch_size=auto measures CUDA memory: give a number on hardware=cpu")
        hardware["per_device_train_batch_size"] = 1  # replaced by the measured pick before training
    sft = {**plain["training"], **plain["optimizer"], **plain["scheduler"], **hardware}
    _check_lora(plain["lora"])
    _check_quant(plain["quant"])
    _check_sft(sft, plain)
    _check_data(plain["data"])
    _check_hardware(hw, sft, choices, check_machine)
    _check_hub_names(plain["hub"], plain["project"])
    _check_tracking(plain["tracking"])
    _build_sft(sft)  # last: pricer's own messages above name the fix better than the library's
    if check_machine:
        _check_hub(plain["hub"])
        _check_tracker_reachable(plain["tracking"])
    return RunConfig(
        project=plain["project"],
        seed=plain["seed"],
        optimized_metric=plain["optimized_metric"],
        output_root=plain["output_root"],
        resume=plain["resume"],
        resume_force=plain["resume_force"],
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

