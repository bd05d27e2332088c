"""The library groups checked against the libraries' own definitions, offline and in milliseconds.

lora, quant and the SFTConfig groups (optimizer, scheduler, training, hardware's SFT keys) are
the libraries' keyword arguments, so their keys are bound to the library's signature (torchtune's
habit) instead of a copy of it: LoraConfig and SFTConfig accept a wrong type or choice at
construction and fail deep inside training; here they fail before anything loads, in one line.
"""

import difflib
import typing
from dataclasses import fields
from types import UnionType
from typing import Any

from pricer.config_errors import ConfigError, check_known, first_line
from pricer.schema import ComputeDtype

COMPUTE_DTYPES = tuple(dtype.value for dtype in ComputeDtype)  # the schema's hardware.compute_dtype choices
QUANT_TYPES = ("nf4", "fp4")  # bitsandbytes' 4-bit data types
# The prompt's fixed words ("How much does this cost to the nearest dollar?" ... "Price is $") take
# ~16 tokens with Llama 3's tokenizer and the price ~4 more: a shorter max_length cuts every item
# before its price, so nothing would be learned.
MIN_MAX_LENGTH = 24


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


def check_lora(lora: dict) -> None:
    from peft import LoraConfig

    check_known("lora", lora, {f.name for f in fields(LoraConfig)})
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
        raise ConfigError(f"lora: {first_line(err)}: fix the lora group (e.g. lora=r16)") from None


def check_quant(quant: dict) -> None:
    import inspect

    from transformers import BitsAndBytesConfig

    check_known("quant", quant, set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"})
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
        raise ConfigError(f"quant: {first_line(err)}: fix the quant group (e.g. quant=nf4)") from None


def build_sft(sft: dict) -> None:
    """SFTConfig's own __post_init__ checks (choices of its enums, flags that exclude each other), as
    one line. use_cpu=True: bf16 is a question about this machine, which pricer.config asks; the
    object is built in ~20 ms, writes nothing to output_dir and is thrown away."""
    import tempfile

    from trl import SFTConfig

    with tempfile.TemporaryDirectory() as unused:
        try:
            SFTConfig(**{**sft, "output_dir": unused, "use_cpu": True, "report_to": [], "push_to_hub": False})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"training/optimizer/scheduler/hardware: SFTConfig refused them: {first_line(err)}") from None


def check_sft(sft: dict, groups: dict[str, dict]) -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames
    from trl import SFTConfig

    library = field_types(SFTConfig)
    for group in ("optimizer", "scheduler", "training"):
        check_known(group, groups[group], set(library))
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
