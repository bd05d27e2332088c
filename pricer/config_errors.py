"""Config problems as one line: which key is wrong and what fixes it.

OmegaConf and Hydra refuse a bad key or value in several lines (the key, the node types, a hint
about HYDRA_FULL_ERROR) and exit 1; pricer says the same in one line, `key=value must be ...`,
and exits 2, whether the refusal came while Hydra composed or in pricer.config.validate.
"""

import difflib
import os
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from enum import Enum
from types import UnionType
from typing import Any

from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)


class ConfigError(ValueError):
    """A one-line, user-facing error: which key is wrong and the override that fixes it."""


def first_line(err: BaseException) -> str:
    """An error's first line without its full stop: pricer's message goes on after it."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(". ")


def check_known(group: str, given: dict, known: set[str]) -> None:
    """Every key of `given` is one of `known`; else the close name, if any."""
    for key in given:
        if key not in known:
            raise unknown_key(f"{group}.{key}" if group else key, known)


def unknown_key(full_key: str, known: set[str]) -> ConfigError:
    prefix, _, key = full_key.rpartition(".")
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return ConfigError(f"{full_key} is not a known key{hint}: remove it or fix its name")


def type_words(annotation: Any) -> str:
    """What a value of this schema type must be, in words."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, UnionType) else (annotation,)
    words = []
    for option in options:
        option = typing.get_origin(option) or option
        if option is type(None):
            continue
        if isinstance(option, type) and issubclass(option, Enum):
            words.append(" or ".join(member.value for member in option))
        else:
            words.append({bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
                          dict: "a group of keys"}.get(option, getattr(option, "__name__", str(option))))
    return " or ".join(words) + (" or null" if type(None) in options else "")


def from_omegaconf(err: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's refusal of one key or value, as pricer's line."""
    key, parent = err.full_key or err.key or "", err.object_type
    schema = typing.get_type_hints(parent) if is_dataclass(parent) else {}
    if isinstance(err, InterpolationResolutionError):
        return ConfigError(f"{key}: {first_line(ValueError(err.msg))}: fix the ${{...}} or set the key on the command line")
    if isinstance(err, MissingMandatoryValue):
        return ConfigError(f"{key} is missing: add it to the config or pass {key}=...")
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        if schema:
            return unknown_key(key, {f.name for f in fields(parent)})
        return ConfigError(f"{key} is not set by any preset: fix its name, or add it with +{key}=...")
    annotation = schema.get(str(err.key))
    if annotation is None:
        return ConfigError(f"{key}: {first_line(ValueError(err.msg))}")
    if is_dataclass(annotation):
        return ConfigError(f"{key}={err.value!r} must be a group of keys: pick a preset, e.g. {key}=NAME")
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return ConfigError(f"{key}={err.value} is not one of {', '.join(m.value for m in annotation)}")
    return ConfigError(f"{key}={err.value!r} must be {type_words(annotation)}")


def from_library(err: BaseException) -> ConfigError | None:
    """The OmegaConf refusal behind a Hydra error (a bad override or preset file), as pricer's line;
    a Hydra error with none behind it (an unknown preset name) as its own first line; None otherwise."""
    from hydra.errors import HydraException

    cause: BaseException | None = err
    while cause is not None:  # a preset file's refusal is Hydra's error's context, an override's its cause
        if isinstance(cause, OmegaConfBaseException):
            return from_omegaconf(cause)
        cause = cause.__cause__ or cause.__context__
    return ConfigError(hydra_line(str(err))) if isinstance(err, HydraException) else None


def hydra_line(message: str) -> str:
    """Hydra's own report (an unknown preset) in one line: what is wrong and the options it lists."""
    head, _, options = message.split("\nConfig search path:")[0].partition("\n\nAvailable options in ")
    lines = [part.strip().rstrip(".") for part in head.splitlines() if part.strip() and not part.startswith("See https://")]
    line = ": ".join(lines[:2])  # e.g. "Error parsing override 'x'" and why: "missing EQUAL at '<EOF>'"
    if options:
        group, _, names = options.partition(":")
        line += f": pick one of {', '.join(names.split())} ({group.strip()})"
    return line


@contextmanager
def library_errors_in_one_line() -> Iterator[None]:
    """Hydra's and OmegaConf's refusals raised inside as ConfigError; anything else as it was."""
    try:
        yield
    except Exception as err:
        found = from_library(err)
        if found is None:
            raise
        raise found from None


@contextmanager
def hydra_raises() -> Iterator[None]:
    """Hydra reports an error it meets while it composes (before the task function runs) in several
    lines and exits 1; with HYDRA_FULL_ERROR it raises it instead, for the entry point to say in one
    line. Unexpected errors then show their full traceback, which is what a bug report needs."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before
