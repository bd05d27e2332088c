"""Check every job of a --multirun before the first one starts (Hydra's basic sweeper).

Hydra's basic sweeper composes each job only as it launches it: with
`lora.lora_dropout=0.1,abc` job 0 trained in full before job 1 failed on its value,
with a traceback and no summary. This callback composes every job's config up front,
as the sweeper will (Hydra's own config loader, `load_sweep_config`), and validates each
with pricer.config.validate, as the pricer_optuna sweeper does for its search space: a
bad value ends the command in one line naming the job, before anything runs.
"""

import itertools
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class CheckJobConfigs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pricer.config_errors import ConfigError
        from pricer.presets import check_repeated_overrides

        try:  # `lora=r8 lora=r64`: either sweeper keeps the last silently
            check_repeated_overrides(list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False)))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return  # the pricer_optuna sweeper checks its own search space (and its workers run checked jobs)
        jobs = job_overrides(config)
        if len(jobs) < 2:
            return
        problem = first_bad_job(config, jobs)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, as the basic sweeper will expand them (its params, then the command line's)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    arguments = params + list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return list(itertools.chain.from_iterable(batches))


def first_bad_job(config: DictConfig, jobs: list[list[str]]) -> str | None:
    """The first job whose config pricer.config.validate refuses, as one line; None if all pass.

    Machine checks (a GPU, a token) are left to each job: they are the same for every job, and
    the first job refuses them in one line before it loads anything."""
    from hydra.core.global_hydra import GlobalHydra

    from pricer.config import validate
    from pricer.config_errors import ConfigError, library_errors_in_one_line
    from pricer.logs import install_log_filters

    install_log_filters()  # validate imports bitsandbytes, whose import notice asks for nothing useful
    loader = GlobalHydra.instance().config_loader()
    for number, overrides in enumerate(jobs):
        try:
            with library_errors_in_one_line():  # a value the schema refuses, while Hydra composes the job
                cfg = loader.load_sweep_config(config, list(overrides))
            choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if v is not None}
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]  # what the job gets
            validate(cfg, choices, check_machine=False)
        except ConfigError as err:
            swept = " ".join(overrides)
            return (f"job {number} of {len(jobs)} ({swept}): {str(err).strip().splitlines()[0]} "
                    "(no job was started: fix that value and run the sweep again)")
    return None
