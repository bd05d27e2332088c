"""Keep tokens out of every log line, whatever library wrote it.

Tokens reach pricer only through the environment (or huggingface_hub's token file)
and are never put in a config, so nothing pricer writes holds one. This filter is
the second line: it masks a token in any log record, e.g. a library error message.
"""

import logging
import os

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


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def install_redaction() -> None:
    """On every handler of the root logger (Hydra's console and file handlers)."""
    redactor = RedactSecrets()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
