"""Hydra's sweep grammar -> Optuna distributions, as hydra-optuna-sweeper reads it.

| override                          | distribution                              |
|-----------------------------------|-------------------------------------------|
| `a,b,c` or `choice(a,b,c)`        | CategoricalDistribution([a, b, c])        |
| `range(1,8,2)` (ints)             | IntDistribution(1, 7, step=2)             |
| `range(0.1,0.45,0.1)` (floats)    | FloatDistribution(0.1, 0.4, step=0.1)     |
| `shuffle(range(..))`              | CategoricalDistribution(the values)       |
| `interval(0,1)`                   | FloatDistribution(0, 1)                   |
| `int(interval(8,64))`             | IntDistribution(8, 64)                    |
| `tag(log, interval(1e-5,1e-3))`   | FloatDistribution(1e-5, 1e-3, log=True)   |
| `tag(log, int(interval(8,64)))`   | IntDistribution(8, 64, log=True)          |
| `x` (no sweep)                    | fixed: passed to every trial unchanged    |

`range` ends before `stop`, as everywhere else in Hydra (the old plugin included it).
"""

import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import CompactHydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

_PLAIN = re.compile(r"[\w\-./]+")  # strings Hydra reads back unquoted


class SweepConfigError(CompactHydraException, ValueError):
    """A sweep setting that cannot work: Hydra prints the one line, without a traceback."""


def parse(overrides: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split `key=value` strings into the search space and the fixed overrides."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                space[key] = distribution(override)
            except SweepConfigError:
                raise
            except ValueError as err:  # Optuna's own checks, e.g. a log range from 0
                raise SweepConfigError(f"{override.input_line}: {err}") from None
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(_choices(override))
    if isinstance(value, RangeSweep):
        return _range(value, list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        if value.start > value.end:
            raise SweepConfigError(f"{override.input_line}: low {value.start} > high {value.end}: "
                                   f"write interval({value.end}, {value.start})")
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SweepConfigError(f"{override.input_line}: this sweep form has no Optuna distribution")


def _choices(override: Override) -> list[Any]:
    choices = list(override.sweep_iterator())
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool)):
            raise SweepConfigError(f"{override.input_line}: choices must be str, int, float or bool, got {choice!r}")
    return choices


def _range(sweep: RangeSweep, values: list[Any]) -> BaseDistribution:
    if not values:
        raise SweepConfigError(f"range({sweep.start}, {sweep.stop}, {sweep.step}) is empty")
    step = abs(sweep.step)
    if all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values), step=int(step))
    # Hydra adds steps in floats (0.30000000000000004); Optuna checks the range in decimals
    return FloatDistribution(round(min(values), 12), round(max(values), 12), step=float(step))


def edges(dist: BaseDistribution) -> list[Any]:
    """The values that stand for a distribution when configs are checked: each choice, or both ends."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def describe(dist: BaseDistribution) -> str:
    """A distribution in the sweep grammar it came from, for messages: choice(a, b), interval(0.0, 0.2), ..."""
    if isinstance(dist, CategoricalDistribution):
        return f"choice({', '.join(override_value(c) for c in dist.choices)})"
    text = f"interval({dist.low}, {dist.high})"
    if getattr(dist, "step", None) not in (None, 1):
        text = f"range({dist.low}, {dist.high}, {dist.step})"
    text = f"int({text})" if isinstance(dist, IntDistribution) and not text.startswith("range") else text
    return f"tag(log, {text})" if dist.log else text


def grid(space: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """GridSampler's value lists; a continuous interval has no grid."""
    return {name: _grid_values(name, dist) for name, dist in space.items()}


def _grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(n)]
    raise SweepConfigError(f"{name}: sampler=grid needs discrete values (choice, range or a,b,c), not {dist}")


def suggest(trial: Trial, space: dict[str, BaseDistribution]) -> None:
    """Ask the trial for each parameter through the public suggest API."""
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def override_value(value: Any) -> str:
    """A suggested value as Hydra override text (`True` -> `true`, `a b` -> `'a b'`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return value if _PLAIN.fullmatch(value) else quote(value)


def quote(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"
