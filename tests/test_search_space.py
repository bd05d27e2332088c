"""The sweep grammar of hydra-optuna-sweeper maps to the right Optuna distributions.

Each form is checked on its own, then every sweep file in sweeps/ is composed and its
params parsed, so a typo in a sweep file fails here and not an hour into a sweep.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.pricer_optuna_sweeper import _space

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


def _sweep_config(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PRICER_SWEEP_STORAGE", "postgresql+psycopg2://u@db:5432/pricer")  # sweeps/slurm.yaml
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"sweep={name}"], return_hydra_config=True)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_file_composes_and_parses(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = (REPO / "sweeps" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"  # Hydra reads the header only before other comments
    assert "python -m pricer.train" in lines[1] and f"sweep={name}" in lines[1]
    cfg = _sweep_config(name, monkeypatch)
    assert cfg.optimized_metric
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    space, _ = _space.parse([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    assert space, f"sweep={name} sweeps nothing"


def test_tpe_sweep_maps_each_param(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _sweep_config("tpe", monkeypatch)
    space, _ = _space.parse([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    assert space["optimizer.learning_rate"] == FloatDistribution(2e-5, 5e-4, log=True)
    assert space["lora.lora_dropout"] == FloatDistribution(0.0, 0.2)
    assert space["scheduler"] == CategoricalDistribution(["cosine", "linear", "constant_with_warmup"])
    assert space["lora"] == CategoricalDistribution(["r8", "r16", "r32", "r64"])
    assert cfg.hydra.sweeper.pruner._target_ == "optuna.pruners.MedianPruner"


def test_slurm_sweep_uses_submitit_and_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _sweep_config("slurm", monkeypatch)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert cfg.hydra.sweeper.storage.startswith("postgresql")
    assert cfg.hydra.sweeper.n_jobs > 1
