"""The Hydra Sweeper: parse the search space, open the study, run trials, write results.

How trials run depends on n_jobs and the launcher:
- n_jobs=1: here, one job at a time through the configured launcher;
- n_jobs>1 with Hydra's in-process launcher: n_jobs worker processes (_workers.py),
  each pinned to a GPU, each with its own ask-run-tell loop;
- n_jobs>1 with a launcher that runs jobs elsewhere (submitit/SLURM): n_jobs threads
  here, each launching one job at a time.
In every case a worker starts its next trial when its last one ends: no batches.
Optuna is imported in sweep(), not at module import: Hydra imports this module at
every start-up to discover plugins.
"""

import logging
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, env_override
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from pricer.logs import masked_url

log = logging.getLogger(__name__)


class PricerOptunaSweeper(Sweeper):
    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: Any, storage: str | None,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, custom_search_space: str | None, metric: str | None,
                 devices: list[str] | None, heartbeat_interval: int, grace_period: int | None,
                 gpus_per_trial: int = 1) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.directions = [str(d) for d in direction] if OmegaConf.is_list(direction) else [str(direction)]
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params or {}
        self.custom_search_space = get_method(custom_search_space) if custom_search_space else None
        self.metric, self.devices = metric, devices
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.gpus_per_trial = gpus_per_trial

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.checks_pricer_configs = _is_pricer_train(task_function)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run the study. A setting that cannot work ends as pricer.train's bad input does: one line, exit 2
        (raised, Hydra would add a hint about HYDRA_FULL_ERROR to a message that has nothing more to say)."""
        from . import _space

        try:
            self._sweep(arguments)
        except _space.SweepConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def _sweep(self, arguments: list[str]) -> None:
        from . import _signals, _space, _study, _workers

        _quiet_optuna()
        self._check_settings()
        self._check_direction(OmegaConf.select(self.config, "optimized_metric"))
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        space, fixed = _space.parse([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        for key in fixed:  # `key=value` on the command line pins a swept key
            space.pop(key, None)
        is_worker = _workers.WORKER_ENV in os.environ
        if not is_worker:  # a worker runs what its parent checked
            if self.storage:
                _study.check_storage(self.storage)
            _check_slurm_launcher(self.launcher)
            if self.checks_pricer_configs:
                self._check_job_configs(space, fixed)
                self._check_shared_gpus(space, fixed)
        url, name = self._study_address(sweep_dir, is_worker)
        if is_worker and _distributed_rank() > 0:  # a k-rank worker's other ranks: run the jobs rank 0 hands out
            with env_override(self._job_env(url, name)), _signals.SweepStop(True) as stop:
                _workers.follow(lambda overrides, number: self.launcher.launch([overrides], initial_job_idx=number), stop)
            return
        if self.storage is None:  # only now, so that a refused sweep leaves nothing behind
            sweep_dir.mkdir(parents=True, exist_ok=True)  # the default optuna.db lives in it
        study, n_trials = self._open_study(url, name, space, sweep_dir / ".optuna.lock")
        sweep_dir.mkdir(parents=True, exist_ok=True)  # multirun.yaml, the lock file, the jobs' dirs
        if not is_worker:
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            log.info("study %s in %s: %d of %d trials done or running", name, masked_url(url),
                     _study.used_count(study), n_trials)
        with env_override(self._job_env(url, name)), _signals.SweepStop(_runs_in_process(self.launcher)) as stop:
            codes = self._run(study, url, n_trials, space, fixed, sweep_dir, stop)
        if not is_worker:
            self._write_results(sweep_dir, _study.results(study), study, url)
        failed = _study.failed_count(study)
        if failed > self.max_failure_rate * n_trials and (stop.signum is not None or is_worker):
            # stopped: the signal's exit code; a worker: its sweep process gives the verdict, once
            log.error("%d of %d trials failed, more than max_failure_rate=%s allows", failed, n_trials, self.max_failure_rate)
        elif failed > self.max_failure_rate * n_trials:
            raise RuntimeError(f"{failed} of {n_trials} trials failed, more than max_failure_rate="
                               f"{self.max_failure_rate} allows; reasons: `python -m pricer.compare {sweep_dir}`")
        self._exit_if_stopped(study, stop.signum, codes)

    def _exit_if_stopped(self, study: Any, signum: int | None, codes: list[int]) -> None:
        """A sweep stopped by a signal exits 128 + signal, as pricer.train does; other worker exits are errors.

        A worker stopped on its own (SIGTERM to its pid) is no error when the other workers
        resumed its trial: the study then holds nothing WAITING. A worker stopped by a signal exits
        128 + signal, or dies of it (exit -signal) before its handler is in (it is still starting
        and holds no trial) or on a second, forced signal: a stopped worker either way, not a failed one.
        """
        from optuna.trial import TrialState

        from pricer.interrupt import SIGNALS

        by_code = {128 + s: s for s in SIGNALS} | {-s: s for s in SIGNALS}
        stopped = [by_code[code] for code in codes if code in by_code]
        if any(code != 0 and code not in by_code for code in codes):
            raise RuntimeError(f"sweep workers exited with codes {codes}: see their logs above")
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if signum is None and stopped and waiting:
            signum = stopped[0]
        if signum is None:
            return
        log.warning("sweep stopped by a signal; %d trials wait (%s): run the same command again to resume them",
                    len(waiting), ", ".join(str(t.number) for t in waiting) or "none")
        sys.exit(128 + signum)

    def _check_settings(self) -> None:
        """Budget, workers, failure rate and directions that cannot work: one line, before any study or dir."""
        from . import _space

        for key, value, example in (("n_trials", self.n_trials, 20), ("n_jobs", self.n_jobs, 1),
                                    ("gpus_per_trial", self.gpus_per_trial, 1)):
            if value < 1:
                raise _space.SweepConfigError(f"hydra.sweeper.{key}={value} must be at least 1: "
                                              f"e.g. hydra.sweeper.{key}={example}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise _space.SweepConfigError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must lie in [0, 1]: "
                                          "e.g. 0.25 tolerates one failed trial in four")
        if any(d not in ("minimize", "maximize") for d in self.directions):
            raise _space.SweepConfigError(f"hydra.sweeper.direction={self.directions}: use minimize, maximize or a list of them")
        tasks = OmegaConf.select(self.config, "hydra.launcher.tasks_per_node", default=None)
        if not _runs_in_process(self.launcher) and tasks is not None and tasks != self.gpus_per_trial:
            # a launcher running jobs elsewhere (SLURM) makes the ranks: one task per GPU of the trial
            raise _space.SweepConfigError(
                f"hydra.sweeper.gpus_per_trial={self.gpus_per_trial} but hydra.launcher.tasks_per_node={tasks}: a trial's "
                f"job runs one task per rank: set hydra.launcher.tasks_per_node={self.gpus_per_trial} and "
                f"hydra.launcher.gpus_per_node={self.gpus_per_trial}")

    def _check_job_configs(self, space: dict, fixed: dict[str, str]) -> None:
        """pricer.config.validate on the base config, then with each choice and both ends of each range.

        Otherwise a bad value fails trial after trial, each after its data and model load,
        until max_failure_rate ends the sweep. Each parameter is checked on the base config
        alone (combinations are left to the trials: they are what the sweep explores).
        """
        from pricer.logs import install_log_filters

        from . import _space

        install_log_filters()  # validate imports bitsandbytes, whose import notice asks for nothing useful
        base = [f"{key}={value}" for key, value in fixed.items()]
        job = self._check_job_config(base, "")
        pruning = not str(self.pruner_cfg.get("_target_", "")).endswith("NopPruner")
        scored = OmegaConf.select(job, "evaluation.eval_steps") or "evaluation.eval_steps" in space
        if pruning and not scored:
            # without a validation score during training the pruner would read the train loss: not the
            # objective, and the wrong way round for a maximised one (hit rate)
            raise _space.SweepConfigError("a pruner needs a validation score during training: set evaluation.eval_steps=N "
                                          "(e.g. 200), or pass hydra/sweeper/pruner=none")
        for key, dist in space.items():
            for value in _space.edges(dist):
                override = f"{key}={_space.override_value(value)}"
                self._check_job_config([*base, override], f"search-space value {override}: ")

    def _check_job_config(self, overrides: list[str], where: str) -> DictConfig:
        """The job's config composed as the launcher will compose it, validated without machine checks."""
        from omegaconf import open_dict, read_write

        from pricer.config import validate
        from pricer.config_errors import ConfigError, library_errors_in_one_line

        from . import _space

        try:
            with library_errors_in_one_line():  # a value the schema refuses, while Hydra composes the job
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if v is not None}
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]  # what the job gets
            validate(cfg, choices, check_machine=False)
        except ConfigError as err:
            raise _space.SweepConfigError(f"{where}{str(err).strip().splitlines()[0]}") from None
        return cfg

    def _needs_workers(self) -> bool:
        """Worker processes: n_jobs > 1 or k ranks per trial with jobs in this process (Hydra's basic launcher)."""
        from . import _workers

        return (_runs_in_process(self.launcher) and (self.n_jobs > 1 or self.gpus_per_trial > 1)
                and _workers.WORKER_ENV not in os.environ)

    def _devices(self) -> list[str]:
        from . import _workers

        if not hasattr(self, "_device_list"):
            self._device_list = list(map(str, self.devices)) if self.devices else _workers.detect_devices()
        return self._device_list

    def _check_shared_gpus(self, space: dict, fixed: dict[str, str]) -> None:
        """Ranks that would share a GPU, refused before any trial where they cannot fit: one line, exit 2.

        A preset's fixed batch is sized for a whole card (hardware=h100: 80 rows fill 80 GB), so two
        workers on one card ran out of memory mid-trial. batch=auto is let through: each worker then
        fills its share (_memory_shares). Two ranks of one trial on one card are refused always (DDP
        needs a GPU per rank)."""
        from . import _space, _workers

        if not self._needs_workers():
            return
        devices, k = self._devices(), self.gpus_per_trial
        assigned = _workers.worker_devices(self.n_jobs, devices, k)
        shared = _workers.shared_devices(assigned)
        if not shared:
            return
        setting = f"hydra.sweeper.n_jobs={self.n_jobs} on hydra.sweeper.devices=[{','.join(devices)}]" + (
            f" with gpus_per_trial={k}" if k > 1 else "")
        if any(len(set(worker)) < k for worker in assigned):
            raise _space.SweepConfigError(f"{setting}: a trial's {k} ranks need {k} different GPUs: list n_jobs x "
                                          f"gpus_per_trial = {self.n_jobs * k} GPUs in hydra.sweeper.devices, or lower gpus_per_trial")
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, [f"{key}={v}" for key, v in fixed.items()])
        hardware, preset = cfg.hardware, cfg.hydra.runtime.choices.get("hardware")
        if hardware.accelerator != "cuda":
            return  # a CPU preset uses no GPU
        swept = [key for key in space if key in ("hardware", "hardware.per_device_train_batch_size", "hardware.memory_gib")]
        if hardware.per_device_train_batch_size == "auto" and not swept:
            self._auto_batch_memory = float(hardware.memory_gib)
            return
        device, count = next(iter(shared.items()))
        batch = "swept" if swept else hardware.per_device_train_batch_size
        raise _space.SweepConfigError(
            f"{setting}: {count} workers share GPU {device}, but hardware.per_device_train_batch_size={batch} "
            f"(hardware={preset}) is a fixed batch, sized for a whole card: pass hardware.per_device_train_batch_size=auto "
            f"(each worker fills its share of the card) or one GPU per worker (hydra.sweeper.devices)")

    def _memory_shares(self) -> list[list[str]] | None:
        """batch=auto on a card that m workers share: each fills hardware.memory_gib / m, not the whole card."""
        from . import _workers

        memory = getattr(self, "_auto_batch_memory", None)
        if memory is None:
            return None
        assigned = _workers.worker_devices(self.n_jobs, self._devices(), self.gpus_per_trial)
        shared = _workers.shared_devices(assigned)
        shares = [memory / max(shared.get(d, 1) for d in worker) for worker in assigned]
        log.info("batch=auto on shared GPUs: each worker fills its share, hardware.memory_gib=%s of %g",
                 ", ".join(f"{share:g}" for share in shares), memory)
        return [[f"hardware.memory_gib={share:g}"] for share in shares]

    def _check_direction(self, metric: str | None) -> None:
        """A study that minimises a hit rate would look for the worst runs: refuse it before any trial."""
        from pricer.objectives import HIGHER_IS_BETTER, OBJECTIVES

        from . import _space

        if metric not in OBJECTIVES or len(self.directions) != 1:
            return  # a custom objective or several: the user's own directions
        wanted = "maximize" if metric in HIGHER_IS_BETTER else "minimize"
        if self.directions[0] != wanted:
            raise _space.SweepConfigError(f"hydra.sweeper.direction={self.directions[0]} would optimise "
                                          f"optimized_metric={metric} the wrong way: add hydra.sweeper.direction={wanted}")

    def _study_address(self, sweep_dir: Path, is_worker: bool) -> tuple[str, str]:
        """Storage URL and study name; a worker inherits its parent's (no URL in overrides: passwords)."""
        from pricer.trial import ENV_STORAGE, ENV_STUDY, study_address

        if is_worker:
            return os.environ[ENV_STORAGE], os.environ[ENV_STUDY]
        return study_address(sweep_dir, self.storage, self.study_name)

    def _open_study(self, url: str, name: str, space: dict, lock_path: Path) -> tuple[Any, int]:
        """Create or join the study, with this process's sampler and the pruner the jobs will use."""
        from pricer.trial import PRUNER_ATTR

        from . import _study

        study = _study.open_study(url, name, self.directions, self.heartbeat_interval, self.grace_period,
                                  self._metric_names())
        lock_path.parent.mkdir(parents=True, exist_ok=True)  # the study opened: the sweep is not refused
        stream = _study.next_stream(study, url, lock_path)
        study.sampler, n_trials = self._sampler(space, stream)
        pruner_spec = OmegaConf.to_container(self.pruner_cfg, resolve=True)
        study.pruner = instantiate(pruner_spec)  # a bad pruner key fails here, not in every job
        study.set_user_attr(PRUNER_ATTR, pruner_spec)
        return study, n_trials

    def _metric_names(self) -> list[str] | None:
        """What the jobs return, one name per direction: pricer.train returns optimized_metric's validation
        twin in a sweep (config.sweep_objective); another app names its objectives in a list. None: unknown."""
        from pricer.objectives import sweep_objective

        metric = OmegaConf.select(self.config, "optimized_metric")
        names = [str(m) for m in metric] if OmegaConf.is_list(metric) else [str(metric)] if metric is not None else []
        if self.checks_pricer_configs:
            names = [sweep_objective(m) for m in names]
        return names if len(names) == len(self.directions) else None

    def _run(self, study: Any, url: str, n_trials: int, space: dict, fixed: dict[str, str],
             sweep_dir: Path, stop: Any) -> list[int]:
        """Run the trial loop here, in n_jobs threads, or in n_jobs worker processes (their exit codes)."""
        from . import _space, _study, _workers

        if self._needs_workers():
            # the workers handle signals: run_workers forwards them (until then stop's handler only records one)
            overrides = ["hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={_space.quote(str(sweep_dir))}"]
            return _workers.run_workers(self.n_jobs, self._devices(), overrides, stop, self.gpus_per_trial,
                                        self._memory_shares())

        def loop() -> None:
            _study.run_trials(study, lambda trial: self._suggest(trial, space, fixed),
                              lambda trial: self._launch(trial, fixed), url=url, n_trials=n_trials,
                              max_failures=self.max_failure_rate * n_trials, lock_path=sweep_dir / ".optuna.lock",
                              grace_s=self.grace_period or 2 * self.heartbeat_interval,  # Optuna's default grace
                              stop=stop)

        if _workers.WORKER_ENV in os.environ and self.gpus_per_trial > 1:  # rank 0 of a worker of k ranks
            _workers.hand_out_group()  # made with the other ranks now: they wait in it for the jobs handed out
            try:
                loop()
            finally:
                _workers.hand_out(None)
            return []
        if self.n_jobs == 1:
            loop()
            return []
        with ThreadPoolExecutor(self.n_jobs, thread_name_prefix="trials") as pool:
            for future in [pool.submit(loop) for _ in range(self.n_jobs)]:
                future.result()
        return []

    def _sampler(self, space: dict, stream: int) -> tuple[Any, int]:
        """The sampler, and n_trials (a grid caps it at its size).

        A seeded sampler restarted on a resumed study, started in a second worker, or by the
        same command run twice on one storage would draw the same params again: `stream`, a
        number the study hands each process once (_study.next_stream), is mixed into the seed,
        so no two processes draw one sequence, by construction. Not for a grid:
        GridSampler gives trial number i the i-th point of the grid shuffled by its seed, so
        every worker must shuffle with the same seed or two trials get one point and another
        point none.
        """
        import numpy as np

        from . import _space

        kwargs: dict[str, Any] = {}
        seed = self.sampler_cfg.get("seed")
        grid_sampler = str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler")
        if seed is not None and stream and not grid_sampler:  # stream 0, the study's first process: the seed as given
            kwargs["seed"] = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
        if not grid_sampler:
            return instantiate(self.sampler_cfg, **kwargs), self.n_trials
        grid = _space.grid(space)
        size = math.prod(len(values) for values in grid.values())
        if size < self.n_trials:
            log.info("grid of %d points: n_trials %d -> %d", size, self.n_trials, size)
        return instantiate(self.sampler_cfg, search_space=grid, **kwargs), min(self.n_trials, size)

    def _job_env(self, url: str, name: str) -> dict[str, str]:
        """What every job of the study finds in its environment (the trial number comes per job).

        Set in this process rather than as job overrides: overrides are logged and saved
        in each job's hydra.yaml, and a storage URL may hold a password.
        """
        from pricer import trial as job_side

        metric = self.metric or OmegaConf.select(self.config, "optimized_metric") or "eval_loss"
        return {job_side.ENV_STORAGE: url, job_side.ENV_STUDY: name, job_side.ENV_METRIC: str(metric)}

    def _suggest(self, trial: Any, space: dict, fixed: dict[str, str]) -> None:
        """Draw the trial's params; fixed overrides are kept as user attrs, as hydra-optuna-sweeper did."""
        from . import _space

        _space.suggest(trial, space)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        for key, value in fixed.items():
            trial.set_user_attr(key, value)

    def _launch(self, trial: Any, fixed: dict[str, str]) -> JobReturn:
        """Run the trial's job through the launcher (job num = trial number, so its dir too).

        A trial that was interrupted or whose worker died carries the run dir its job
        trained in: pricer.train continues that run (`resume=`), from its last complete
        checkpoint, under the same run name, Hub repo and W&B run.
        """
        from pricer.trial import ENV_TRIAL, RUN_DIR

        from . import _slurm_jobs, _space, _workers

        adopted = _slurm_jobs.adopted_job_result(trial)  # a SLURM job that outlived the sweep process that submitted it
        if adopted is not None:
            return adopted

        overrides = [f"{k}={_space.override_value(v)}" for k, v in trial.params.items()]
        overrides += [f"{k}={v}" for k, v in fixed.items()]
        run_dir = _resumable(trial.user_attrs.get(RUN_DIR)) if self.checks_pricer_configs else None
        if run_dir is not None:
            log.info("trial %d resumes %s", trial.number, run_dir)
            overrides.append(f"resume={_space.quote(run_dir)}")
        overrides.append(f"++hydra.job.env_set.{ENV_TRIAL}={trial.number}")  # per job, so via its config
        if self.gpus_per_trial > 1 and _runs_in_process(self.launcher):
            _workers.hand_out(overrides, trial.number)  # the worker's other ranks run the same job with rank 0
        ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        return _slurm_jobs.wait_while_requeued(trial, ret) if not _runs_in_process(self.launcher) else ret

    def _write_results(self, sweep_dir: Path, results: dict, study: Any = None, url: str | None = None) -> None:
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        if "best_value" in results:
            log.info("best trial %d: %s = %s", results["best_trial"], results["best_params"], results["best_value"])
        log.info("trials by state %s; results in %s", results["trials"], sweep_dir / "optimization_results.yaml")
        if study is not None and url is not None:
            self._summarise_in_wandb(sweep_dir, results, study, url)

    def _summarise_in_wandb(self, sweep_dir: Path, results: dict, study: Any, url: str) -> None:
        """With tracking=wandb, the sweep's result as one run of job_type `sweep` in the group its trials' runs
        share (pricer.train names it sweep-{sweep dir}): best trial, value, run name, Hub repo, W&B run, run dir."""
        from pricer import compare, tracking

        backend = OmegaConf.select(self.config, "tracking.backend", default="none")
        if backend == "none" or not self.checks_pricer_configs:
            return
        names = compare.objective_names(study)
        best = [compare.trial_links(t, names) for t in compare.best_trials(study)]
        summary: dict[str, Any] = {"trials": results["trials"], "best": best}
        if best:  # the runs table shows these as columns
            top = best[0]
            summary |= {"best_trial": top["number"], **{f"best/{k}": v for k, v in top["values"].items()},
                        **{f"best/{k}": v for k, v in top["scores"].items() if k not in top["values"]},
                        "best_run_name": (top["wandb"] or {}).get("name"), "best_wandb_id": (top["wandb"] or {}).get("id"),
                        "best_hub_repo": top["hub_repo"], "best_run_dir": top["run_dir"]}
        config = {"study_name": study.study_name, "storage": masked_url(url), "sweep_dir": str(sweep_dir),
                  "objectives": names, "directions": self.directions, "n_trials": self.n_trials}
        swept = {name for t in study.get_trials(deepcopy=False) for name in t.params}  # lora=choice(...): no one preset
        choices = {group: choice for group, choice in OmegaConf.to_container(self.config.hydra.runtime.choices).items()
                   if group not in swept}
        tracking.sweep_summary(backend, OmegaConf.select(self.config, "tracking.project", default=None) or self.config.project,
                               OmegaConf.select(self.config, "tracking.entity", default=None), f"sweep-{sweep_dir.name}",
                               str(sweep_dir), config, summary,
                               tracking.preset_tags(choices, OmegaConf.select(self.config, "tracking.tags", default=None)))


def _check_slurm_launcher(launcher: Any) -> None:
    """hydra-submitit-launcher's SLURM settings as SLURM sees them, before any job: `sbatch --test-only` on the job
    script submitit would write (no job is submitted). A partition, account or QOS SLURM refuses, or a launcher key
    submitit does not know, is one line naming the key; otherwise each trial would fail at its own sbatch."""
    import shutil
    import subprocess
    import tempfile

    from . import _space

    params = getattr(launcher, "params", None)
    if getattr(launcher, "_EXECUTOR", None) != "slurm" or params is None:
        return
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise _space.SweepConfigError("hydra/launcher=submitit_slurm: no sbatch/srun on this machine: run the sweep on a "
                                      "SLURM login node (or in a job), or drop sweep=slurm")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    with tempfile.TemporaryDirectory() as folder:
        try:  # the launcher's own translation of its keys (hydra_submitit_launcher.submitit_launcher.launch)
            executor = submitit.AutoExecutor(cluster="slurm", folder=folder, slurm_max_num_timeout=params.get("max_num_timeout", 0))
            generic = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()
                                          if k not in ("max_num_timeout", "submitit_folder")})
        except (ValueError, TypeError) as err:
            raise _space.SweepConfigError(f"hydra.launcher: {str(err).strip().splitlines()[0]}") from None
        script = Path(folder) / "check.sh"
        script.write_text(executor._executor._make_submission_file_text("true", "check"))
        out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        return
    text = (out.stderr or out.stdout).strip()
    said = text.splitlines()[-1].strip()
    for key in ("account", "qos", "partition"):  # in this order: SLURM's account error also names the partition
        if key in said.lower():
            raise _space.SweepConfigError(f"hydra.launcher.{key}={params.get(key)}: SLURM refuses it ({said}): "
                                          "see `sinfo` and `sacctmgr show assoc user=$USER`")
    asks = ", ".join(f"{k}={params.get(k)}" for k in ("nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb"))
    raise _space.SweepConfigError(f"hydra.launcher: SLURM refuses the job ({said}): it asks {asks}; see `sinfo -N -l`")


def _resumable(run_dir: str | None) -> str | None:
    """The run dir if pricer.train can continue it; a finished (or deleted) one is trained afresh."""
    from pricer.resume import ENDED, RUN_FILE, read_run

    if not run_dir or not (Path(run_dir) / RUN_FILE).exists():
        return None
    return None if read_run(Path(run_dir)).get("status") in ENDED else run_dir


def _distributed_rank() -> int:
    """This process's rank: > 0 in a worker of k ranks (torchrun) that is not rank 0."""
    from pricer.distributed import rank

    return rank()


def _quiet_optuna() -> None:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")  # we beat, not optimize()


def _runs_in_process(launcher: Any) -> bool:
    """Hydra's basic launcher runs jobs in this process: parallel jobs need worker processes."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    return isinstance(launcher, BasicLauncher)


def _is_pricer_train(task_function: TaskFunction) -> bool:
    """The jobs are pricer.train's (not another Hydra app's): their configs can be validated here."""
    import inspect

    from pricer import PACKAGE_DIR

    try:
        return Path(inspect.getfile(task_function)).resolve() == PACKAGE_DIR / "train.py"
    except TypeError:  # a builtin or a callable object: not pricer.train
        return False
