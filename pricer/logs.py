"""What reaches the log: no token ever, and no warning a user cannot act on.

Tokens reach pricer only through the environment (or huggingface_hub's token file)
and are never put in a config, so nothing pricer writes holds one. The redaction
filter is the second line: it masks a token in any log record, e.g. a library error.
"""

import logging
import os
import re
import warnings

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
MASK = "***"


def secret_values() -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_ENV]
    try:
        from huggingface_hub import get_token

        values.append(get_token() or "")
    except ImportError:
        pass
    return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)


def masked_url(url: str) -> str:
    """A database URL without its password, even one SQLAlchemy cannot parse: it goes into logs and errors."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redact_record(record: logging.LogRecord, secrets: list[str]) -> logging.LogRecord:
    """The record with every secret masked in its message and its traceback text, in place."""
    if not secrets:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: the handler reports it as logging does
        return record
    clean = redact(message, secrets)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
    return record


class RedactSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.secrets)
        return True


_masked_secrets: list[str] = []


def mask_every_record() -> None:
    """Mask secrets in every log record as it is created, whichever logger emits it and whichever
    handler writes it: transformers' loggers do not propagate to the root (its own stderr handler,
    made when transformers is first imported), and W&B's debug log has a file handler of its own,
    so a filter on the root's handlers alone misses both. Idempotent; each call re-reads the secrets
    (a --multirun job may run with other tokens)."""
    _masked_secrets[:] = secret_values()
    factory = logging.getLogRecordFactory()
    if getattr(factory, "pricer_masks", False):
        return

    def masking_factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(factory(*args, **kwargs), _masked_secrets)

    masking_factory.pricer_masks = True
    logging.setLogRecordFactory(masking_factory)


class DropKnownNoise(logging.Filter):
    """Drops a library's notice, by a substring of it, where the notice asks nothing of a user.

    - bitsandbytes' repacked CPU matmul: on CPUs with AVX512-BF16, importing bitsandbytes asks
      the `kernels` package for that kernel; offline, `kernels` says it skips its publisher
      check, then bitsandbytes says it found no kernel. pricer keeps that repack off
      (pricer.modeling.keep_4bit_layout), so the kernel is never called.
    - Liger's optional backends: at a kernel's first call (hardware.liger=true), liger-kernel 0.8
      tries its CuTe-DSL and Ascend NPU variants of the op and warns for each it cannot import,
      then runs its Triton kernel, the one pricer's Liger numbers (BENCHMARKS.md) were measured
      with. liger_kernel.backends.registry.get_discovery_failures() still lists them."""

    def __init__(self, substring: str) -> None:
        super().__init__()
        self.substring = substring

    def filter(self, record: logging.LogRecord) -> bool:
        return self.substring not in str(record.msg)


KNOWN_NOISE = {  # logger -> a substring of its notice that DropKnownNoise drops
    "bitsandbytes.backends.cpu.ops": "gemm_4bit_forward",
    "kernels._internals.hf_hub": "kernels-community/quantization-bitsandbytes",
    "liger_kernel.backends.registry": "could not be imported",
}
# transformers 5.24 renamed gradient_checkpointing to activation_checkpointing and warns at every
# use, TRL's included; 5.17 (the GPU image) knows only the old name, and both work until v6, which
# pyproject excludes: nothing for a user to change.
KNOWN_FUTURE_WARNINGS = (r"`(is_)?gradient_checkpointing` is deprecated",)


def drop_known_noise() -> None:
    """Silence the notices above at their source. Runs when pricer is imported, so it is in place
    before a command imports transformers, and with it bitsandbytes (train and evaluate do when they
    validate or load a model; push and compare never do). Idempotent."""
    for name, substring in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(DropKnownNoise(substring))
    for message in KNOWN_FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def install_log_filters() -> None:
    """Tokens masked in every log record (mask_every_record) and, as a second line should a library
    replace the record factory, by a filter on every handler of the root logger (Hydra's console and
    file handlers). Idempotent; a second call (the next job of a --multirun) re-reads the tokens."""
    drop_known_noise()
    mask_every_record()
    for handler in logging.getLogger().handlers:
        redactors = [f for f in handler.filters if isinstance(f, RedactSecrets)]
        for redactor in redactors:
            redactor.secrets = list(_masked_secrets)
        if not redactors:
            handler.addFilter(RedactSecrets())
