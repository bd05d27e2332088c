"""The sweep grammar of hydra-optuna-sweeper maps to the right Optuna distributions.

Each form is checked on its own, then every sweep file in sweeps/ goes through what the sweep does
before its first trial, so a typo in a sweep file fails here and not an hour into a sweep.
"""

import inspect
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.pricer_optuna_sweeper import _space, _study
from pricer import job_check, train

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("a=x,y,z", CategoricalDistribution(["x", "y", "z"])),
        ("a=choice(x, 'y z', true, 1.5)", CategoricalDistribution(["x", "y z", True, 1.5])),
        ("lora=choice(r8, r16)", CategoricalDistribution(["r8", "r16"])),
        ("a=range(1, 8, 2)", IntDistribution(1, 7, step=2)),  # Hydra's range ends before stop
        ("a=range(0.1, 0.45, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),  # the values Hydra yields
        ("a=interval(0, 1)", FloatDistribution(0.0, 1.0)),
        ("a=int(interval(8, 64))", IntDistribution(8, 64)),
        ("a=tag(log, interval(1e-5, 1e-3))", FloatDistribution(1e-5, 1e-3, log=True)),
        ("a=tag(log, int(interval(8, 64)))", IntDistribution(8, 64, log=True)),
    ],
)
def test_each_form_maps_to_its_distribution(override: str, expected) -> None:
    space, fixed = _space.parse([override])
    assert space == {override.split("=")[0]: expected}
    assert fixed == {}


def test_shuffled_range_is_categorical_and_plain_values_stay_fixed() -> None:
    space, fixed = _space.parse(["a=shuffle(range(1, 4))", "b=3", "+c.d=text"])
    assert isinstance(space["a"], CategoricalDistribution)
    assert sorted(space["a"].choices) == [1, 2, 3]
    assert fixed == {"b": "3", "+c.d": "text"}


def test_grid_values_cover_each_discrete_distribution() -> None:
    space, _ = _space.parse(["a=choice(x, y)", "b=range(8, 33, 8)", "c=range(0.05, 0.25, 0.05)"])
    assert _space.grid(space) == {"a": ["x", "y"], "b": [8, 16, 24, 32], "c": [0.05, 0.1, 0.15, 0.2]}
    with pytest.raises(ValueError, match="grid needs discrete values"):
        _space.grid(_space.parse(["d=interval(0, 1)"])[0])


def test_non_primitive_choices_are_refused() -> None:
    with pytest.raises(ValueError, match="choices must be"):
        _space.parse(["a=choice([1, 2], [3])"])


@pytest.mark.parametrize("value", ["r8", "cosine", "y z", "it's", True, False, 3, 1.5e-05, 0.1])
def test_suggested_values_read_back_unchanged_as_overrides(value) -> None:
    """A trial's value becomes `key=value` on the job's command line: Hydra must read it back."""
    parsed = OverridesParser.create().parse_overrides([f"k={_space.override_value(value)}"])[0]
    assert parsed.value() == value


def _validated_values(monkeypatch: pytest.MonkeyPatch, keys: list[str]) -> dict[str, list]:
    """Each swept key's value in every job config pricer.config.validate is given from now on (the real
    validate still runs): what a check really validated, not what it was asked to."""
    from pricer import config

    seen: dict[str, list] = {key: [] for key in keys}
    validate = config.validate

    def spy(cfg, choices=None, check_machine=True):
        for key in keys:
            seen[key].append(choices[key] if key in (choices or {}) else OmegaConf.select(cfg, key))
        return validate(cfg, choices, check_machine)

    monkeypatch.setattr(config, "validate", spy)
    return seen


@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_validates_every_value_it_can_try_before_its_first_trial(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `python -m pricer.train sweep=NAME` does before its first job, done as it does it: Hydra composes
    the sweep, its search space parses, and the sweeper's own check (pricer_optuna's, or pricer.job_check's
    for Hydra's basic sweeper) validates a job config holding each value the sweep can try: each choice and
    both ends of each range. A value a run would refuse fails here, not an hour into the sweep."""
    lines = (REPO / "sweeps" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"  # Hydra reads the header only before other comments
    assert "python -m pricer.train" in lines[1] and f"sweep={name}" in lines[1]
    monkeypatch.setenv("PRICER_SWEEP_STORAGE", "postgresql+psycopg2://u@db:5432/pricer")  # sweeps/slurm.yaml
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={name}"], return_hydra_config=True)
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        arguments = list(cfg.hydra.overrides.task)
        space, fixed = _space.parse([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + arguments)
        assert space, f"sweep={name} sweeps nothing"
        seen = _validated_values(monkeypatch, list(space))
        if cfg.hydra.sweeper._target_ == job_check.BASIC_SWEEPER:
            jobs = job_check.job_overrides(cfg)
            assert len(jobs) == math.prod(len(values) for values in _space.grid(space).values())
            assert job_check.first_bad_job(cfg, jobs) is None
        else:
            sweeper = Plugins.instance().instantiate_sweeper(
                config=cfg, hydra_context=HydraContext(config_loader=GlobalHydra.instance().config_loader(),
                                                       callbacks=Callbacks(cfg)),
                task_function=inspect.unwrap(train.main))
            assert sweeper.checks_pricer_configs
            sweeper._check_settings()
            sweeper._check_direction(cfg.optimized_metric)
            if sweeper.storage:
                _study.check_storage(sweeper.storage)
            sweeper._check_job_configs(space, fixed)
            if "GridSampler" in cfg.hydra.sweeper.sampler._target_:
                assert sweeper.n_trials == math.prod(len(values) for values in _space.grid(space).values()), \
                    "n_trials runs the grid once, in full"
    for key, dist in space.items():
        missed = [value for value in _space.edges(dist) if value not in seen[key]]
        assert not missed, f"sweep={name}: {key}={missed} never validated"
