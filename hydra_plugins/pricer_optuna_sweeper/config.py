"""The sweeper's config, registered as `hydra/sweeper=pricer_optuna`.

Keys follow hydra-optuna-sweeper so existing sweep files work; the rest are marked
"pricer:". Samplers and pruners are config groups holding the Optuna class's own
keyword names, so `hydra.sweeper.sampler.seed=7` or `hydra/sweeper/pruner=hyperband`
go straight to Optuna.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10  # random trials before TPE models the results
    n_ei_candidates: int = 24
    multivariate: bool | None = None  # true: models parameters jointly (lr x batch)
    group: bool = False
    constant_liar: bool = True  # parallel workers avoid sampling next to each other's running trials
    consider_endpoints: bool | None = None
    warn_independent_sampling: bool | None = None


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf:
    """The grid comes from `params` (choice, range, lists); n_trials caps it."""

    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    x0: dict[str, Any] | None = None
    sigma0: float | None = None
    n_startup_trials: int = 1
    restart_strategy: str | None = None
    popsize: int | None = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False  # needed for int/discrete parameters
    lr_adapt: bool = False
    consider_pruned_trials: bool = False
    warn_independent_sampling: bool = True


@dataclass
class NSGAIISamplerConf:
    """Multi-objective: set `direction` to a list, return a list of values."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class MedianPrunerConf:
    """Stops a trial whose value is worse than the median of earlier trials at the same step."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials that always run to the end, to build the median
    n_warmup_steps: int = 0  # steps of each trial never pruned (the loss is noisy at first)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # steps a trial always gets
    max_resource: Any = "auto"  # "auto": the steps of the first finished trial
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class PricerOptunaSweeperConf:
    _target_: str = "hydra_plugins.pricer_optuna_sweeper.optuna_sweeper.PricerOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds sampler and pruner itself (grid space, worker seeds)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: Any = MISSING
    direction: Any = "minimize"  # or maximize, or a list of both for multi-objective
    storage: str | None = None  # any SQLAlchemy URL; null: sqlite:///{hydra.sweep.dir}/optuna.db
    study_name: str | None = None  # null: the sweep dir's name; same name + storage = resume
    n_trials: int = 20  # the study's total: a rerun only runs what is missing
    n_jobs: int = 1  # trials at once; > 1: one worker process per GPU (or launcher job)
    max_failure_rate: float = 0.0  # the sweep stops once more than this share of n_trials failed
    params: dict[str, Any] | None = None  # key: choice(..) | range(..) | interval(..) | tag(log, ..) | a,b,c
    custom_search_space: str | None = None  # dotted path to fn(cfg, optuna.Trial) -> None

    # pricer:
    pruner: Any = MISSING  # hydra/sweeper/pruner=median|hyperband|successive_halving|none
    metric: str | None = None  # reported at each eval for pruning; null: the config's optimized_metric
    devices: list[str] | None = None  # GPUs the workers are pinned to; null: all visible ones
    gpus_per_trial: int = 1  # ranks of each trial: > 1 runs each worker under torchrun (gloo on CPU); SLURM: tasks_per_node
    heartbeat_interval: int = 60  # s; a RUNNING trial silent for 2 intervals is re-queued
    grace_period: int | None = None  # s; null: 2 x heartbeat_interval


_SAMPLERS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "grid": GridSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
}
_PRUNERS = {
    "median": MedianPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "none": NopPrunerConf,
}

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="pricer_optuna", node=PricerOptunaSweeperConf, provider="pricer")
for _name, _node in _SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="pricer")
for _name, _node in _PRUNERS.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="pricer")
