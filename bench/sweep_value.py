"""Sweep value: what each search strategy buys on real training, at the grid's compute.

    python bench/sweep_value.py run OUT --gpu            # seeds 0-2, strategies one block after another (one GPU)
    python bench/sweep_value.py run OUT --gpu --parallel 5 --seeds 3 4 5 6 7 8 9 \
        --blocks grid+random+tpe_median tpe_hyperband+tpe --records bench/results/sweep_value_s3-9.json
                                                         # more seeds: 5 sweeps at a time from one queue
    python bench/sweep_value.py run OUT --dry            # the same pipeline, tiny sizes, ~2 min on 2 idle CPU cores
    python bench/sweep_value.py analyse OUT              # tables + PNG from what the sweeps wrote
    python bench/sweep_value.py analyse bench/results/sweep_value*.json   # the same from the saved records

The analysis (BENCHMARKS.md, "Sweep value"): what a user gets is the test error of the model a sweep
selects on validation once it has spent 1/3 and 1x of the same seed's grid compute; each strategy is
paired seed by seed with random search and the grid of that seed, and the report gives medians over
seeds with bootstrap 90 % intervals, calling a difference only where the interval excludes zero and
at least MIN_SEEDS seeds pair. Beside them: compute to match the grid's best val, the winners' val-test
gap, and the noise of one configuration (the grid's points over seeds).

Every strategy is pricer's own sweeper, run as a user runs it (`python -m pricer.train
experiment=demo sweep=value_*`, sweeps/value_*.yaml): the tiny random-init Llama on the
bundled sample data, 300 steps a trial, selected on 200 validation items held out of the
train split, the test error only reported. Per seed (training seed and sampler seed):

- grid: the card's space, dropout 0.05/0.1/0.2 x lr 3e-4/1e-3/3e-3 x constant/cosine (18 runs);
- random, tpe: the same ranges (lr continuous, log) plus the LoRA rank, 18 trials;
- tpe_median, tpe_hyperband: TPE with a pruner reading the validation error every 50 steps,
  28 trials (pruned ones cost less), cut at the grid's compute in the analysis;
- tpe_median_sync: the same sweep in synchronous batches, actually run: the command again
  with n_trials = n_jobs, 2 n_jobs, ... continuing the study through its storage, each
  invocation waiting for its slowest trial.

Why each number is taken where it is: compute is training steps actually run (a pruned
trial counts the steps it ran, `pruned_at_step`; a finished one its `train_steps` from
adapter/metrics.json); times are the trials' datetime_start/complete in the study; the
test error is the trial's `test/price_error` user attr. Nothing is re-simulated.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_report import write_section  # bench/bench_report.py, beside this script

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = {  # name -> sweep file (sweeps/NAME.yaml)
    "grid": "value_grid",
    "random": "value_random",
    "tpe": "value_tpe",
    "tpe_median": "value_tpe_median",
    "tpe_hyperband": "value_tpe_hyperband",
}
SYNC = "tpe_median"  # the strategy also run in synchronous batches: pruning makes trial lengths unequal
LABELS = {"grid": "grid (18)", "random": "random (18)", "tpe": "TPE (18)", "tpe_median": "TPE + median pruning (28)",
          "tpe_hyperband": "TPE + Hyperband (28)"}


# ---------------------------------------------------------------- running the sweeps

def sweep_command(strategy: str, seed: int, root: Path, jobs: int, extra: list[str]) -> list[str]:
    """The user's command for one strategy and seed; each sweep in its own output_root (own optuna.db)."""
    # The grid gets no sampler seed: GridSampler then shuffles with seed 0, so every seed's grid runs
    # its points in one order and only the training seed differs (as in the recorded grid runs).
    sampler_seed = [] if strategy == "grid" else [f"hydra.sweeper.sampler.seed={seed}"]
    return [sys.executable, "-m", "pricer.train", "experiment=demo", f"sweep={STRATEGIES[strategy]}",
            f"seed={seed}", *sampler_seed, f"output_root={root}",
            f"hydra.sweeper.n_jobs={jobs}", "tracking=none", "hub.push=false", *extra]


def size_overrides(strategy: str, dry: bool) -> list[str]:
    """--dry: a 3-point grid (lr only), 20-step trials scored every 10 steps on 40 items; else the files' sizes."""
    if not dry:
        return []
    out = ["training.max_steps=20", "evaluation.eval_steps=10", "evaluation.val_items=40", "evaluation.test_items=40"]
    if strategy == "grid":
        return out + ["scheduler=constant_with_warmup", "lora.lora_dropout=0.1"]  # pinned: the grid is the 3 lrs
    out.append("hydra.sweeper.n_trials=4" if strategy.startswith("tpe_") else "hydra.sweeper.n_trials=3")
    if strategy.startswith("tpe"):
        out.append("hydra.sweeper.sampler.n_startup_trials=2")
    if strategy == "tpe_median":
        out += ["hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=10"]
    if strategy == "tpe_hyperband":
        out += ["hydra.sweeper.pruner.min_resource=10", "hydra.sweeper.pruner.max_resource=20"]
    return out


def timed(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one sweep command to its end; what ran, its exit code and wall seconds."""
    start = time.time()
    with log.open("a") as f:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return {"cmd": cmd[1:], "rc": code, "start": start, "wall_s": time.time() - start}


def run_block(jobs_of: list[tuple[str, list[list[str]]]], out: Path, env: dict[str, str]) -> list[dict]:
    """Run sweeps side by side (one thread each); a sweep given several commands runs them one after another.

    The three seeds of one strategy run together, so every strategy meets the same load on the machine."""
    results: list[dict] = []

    def one(name: str, cmds: list[list[str]]) -> None:
        for cmd in cmds:
            results.append({"sweep": name, **timed(cmd, out / "logs" / f"{name}.log", env)})

    threads = [threading.Thread(target=one, args=job) for job in jobs_of]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def run_pool(jobs_of: list[tuple[str, list[list[str]]]], out: Path, env: dict[str, str], parallel: int,
             end_at: float, guess_s: float, save: Any, fit: float = 1.0) -> list[dict]:
    """Run sweeps through `parallel` slots, in the given order, each slot taking the next when its sweep ends.

    The load stays at `parallel` sweeps (the seeds of all strategies interleaved), so every strategy meets the
    same machine; a sweep starts only if `fit` of it should end before `end_at` (its strategy's longest run so
    far, else guess_s): 1.0 for whole sweeps; 0.45 lets a last sweep cover at least a third of the grid's compute,
    the first budget the analysis reads (a sweep cut there is recorded as cut, see collect)."""
    results: list[dict] = []
    queue = list(jobs_of)
    lock = threading.Lock()

    def longest(name: str) -> float:
        strategy = name.rsplit("_s", 1)[0]
        seen = [r["wall_s"] for r in results if r["sweep"].rsplit("_s", 1)[0] == strategy]
        return max(seen) if seen else guess_s

    def slot() -> None:
        while True:
            with lock:
                job = next((j for j in queue if time.time() + fit * longest(j[0]) <= end_at), None)
                if job is None:
                    return
                queue.remove(job)
            name, cmds = job
            for cmd in cmds:
                done = {"sweep": name, **timed(cmd, out / "logs" / f"{name}.log", env)}
                with lock:
                    results.append(done)
                    save(results)
                print(f"{name}: {done['wall_s']:.0f} s, rc {done['rc']}", flush=True)

    threads = [threading.Thread(target=slot) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if queue:
        print(f"not started (no time left): {', '.join(name for name, _ in queue)}", flush=True)
    return results


def sample_load(stop: threading.Event, samples: list[list[float]], every_s: float = 5.0) -> None:
    """CPU busy share (all cores, /proc/stat) and GPU utilisation and memory (nvidia-smi) every few seconds:
    whether more sweeps side by side could run faster, or the machine is already full."""
    def cpu() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    t0, (total0, idle0) = time.time(), cpu()
    while not stop.wait(every_s):
        total, idle_ = cpu()
        busy = 1 - (idle_ - idle0) / max(1, total - total0)
        total0, idle0 = total, idle_
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
            gpu, mem = (float(x) for x in smi.split(","))
        except (OSError, ValueError, subprocess.SubprocessError):
            gpu, mem = float("nan"), float("nan")
        samples.append([round(time.time() - t0, 1), round(busy, 3), gpu, mem])


def device_name(gpu: bool) -> str:
    if not gpu:
        return f"CPU ({os.cpu_count()} cores)"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout
    return f"{out.splitlines()[0].strip()}, {os.cpu_count()} CPU cores"


def run(out: Path, seeds: list[int], jobs: int, gpu: bool, dry: bool, blocks: list[list[str]],
        sync_seeds: list[int], sync_batches: int | None, parallel: int | None = None, end_s: float = 1e9,
        guess_s: float = 240.0, fit: float = 1.0) -> None:
    """Each block's strategies x seeds side by side, blocks one after another; records to OUT.

    With `parallel`, the blocks form one queue instead: block by block, seed by seed within a block (a block's
    strategies of one seed next to each other), `parallel` sweeps at a time, none started that would outlast
    `end_s` seconds from now.
    The block "sync" is the synchronous schedule of SYNC, for sync_seeds, sync_batches batches of
    n_jobs (default: the whole study): a block of its own, so with 3 seeds it meets the same load
    on the machine (3 sweeps of n_jobs workers) as SYNC's asynchronous block."""
    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("PRICER_CACHE", str(out / "cache"))
    machine = ["hardware=a100_notebook", "hardware.dataloader_num_workers=0",
               f"hydra.sweeper.devices=[{','.join('0' * jobs)}]"] if gpu else []
    if not gpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    elif parallel:  # many processes on few cores: torch's thread-per-core default makes them spin on each other
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (parallel * jobs))))
    # build the tiny model once, before workers race to build it
    subprocess.run([sys.executable, "-c", "import sys; from pricer.modeling import ensure_tiny_model; "
                    "ensure_tiny_model(sys.argv[1])", f"{env['PRICER_CACHE']}/tiny-llama"], cwd=REPO, env=env, check=True)
    log: list[dict] = []
    load: list[list[float]] = []
    meta = {"argv": ["python", "bench/sweep_value.py", *sys.argv[1:]], "seeds": seeds, "n_jobs": jobs, "gpu": gpu,
            "dry": dry, "host": os.uname().nodename,
            "device": device_name(gpu), "parallel": parallel, "omp_threads": env.get("OMP_NUM_THREADS"),
            "load": load, "load_columns": ["s", "cpu_busy", "gpu_util_pct", "gpu_mem_mib"]}

    def save_log(done: list[dict] | None = None) -> None:  # after every sweep: a run cut off still analyses
        (out / "run_log.json").write_text(json.dumps(dict(meta, commands=log + (done or [])), indent=1))

    stop = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(stop, load), daemon=True)
    sampler.start()
    if parallel:
        save_log()  # an empty log at once: `analyse OUT` while the pool runs reads what has ended
        order = [(strategy, seed) for b in blocks for seed in seeds for strategy in b if strategy != "sync"]
        queue = [(f"{strategy}_s{seed}", [sweep_command(strategy, seed, out / f"{strategy}_s{seed}", jobs,
                                                         machine + size_overrides(strategy, dry))]) for strategy, seed in order]
        log += run_pool(queue, out, env, parallel, t_start + end_s, guess_s, save_log, fit)
        blocks = [b for b in blocks if "sync" in b]
    for strategies in blocks:
        save_log()
        block = [(f"{strategy}_s{seed}", [sweep_command(strategy, seed, out / f"{strategy}_s{seed}", jobs,
                                                        machine + size_overrides(strategy, dry))])
                 for strategy in strategies if strategy != "sync" for seed in seeds]
        if "sync" in strategies:
            total = sync_batches * jobs if sync_batches else n_trials_of(SYNC, dry)
            for seed in sync_seeds:
                base = sweep_command(SYNC, seed, out / f"{SYNC}_sync_s{seed}", jobs, machine + size_overrides(SYNC, dry))
                block.append((f"{SYNC}_sync_s{seed}", [base + [f"hydra.sweeper.n_trials={k}"]
                                                       for k in range(jobs, total + 1, jobs)]))
        done = run_block(block, out, env)
        log += done
        print(f"{'+'.join(strategies)}: {[(r['sweep'], round(r['wall_s']), r['rc']) for r in done]}", flush=True)
    stop.set()
    sampler.join()
    save_log()


def n_trials_of(strategy: str, dry: bool) -> int:
    """The study's size as its sweep file (or --dry) sets it."""
    for override in size_overrides(strategy, dry):
        if override.startswith("hydra.sweeper.n_trials="):
            return int(override.split("=")[1])
    import yaml

    text = (REPO / "sweeps" / f"{STRATEGIES[strategy]}.yaml").read_text()
    return int(yaml.safe_load(text)["hydra"]["sweeper"]["n_trials"])


# ---------------------------------------------------------------- collecting what the sweeps wrote

def collect(out: Path) -> dict[str, Any]:
    """Per-trial records from each sweep's optuna.db and its trials' adapter/metrics.json.

    A sweep the run log does not list as ended (still running, or cut off by the device call's limit) is named
    in meta["cut"] and its ended trials are kept with `cut: true`: the analysis uses such a sweep only for the
    budgets its ended trials cover (steps run in the order trials ended reach past the budget)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = json.loads((out / "run_log.json").read_text())
    ended = {c["sweep"]: c for c in meta["commands"]}
    meta["cut"] = []
    trials: list[dict] = []
    for db in sorted(out.glob("*_s*/sweeps/*/optuna.db")):
        sweep = db.parents[2].name  # e.g. tpe_median_sync_s1
        if sweep not in ended:
            meta["cut"].append(sweep)
        name, seed = sweep.rsplit("_s", 1)
        schedule = "sync" if name.endswith("_sync") else "async"
        storage = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for t in study.get_trials(deepcopy=False):
                if t.datetime_start is None or t.datetime_complete is None:
                    continue  # never started, or still running when the run was cut off
                trials.append({
                    "strategy": name.removesuffix("_sync"), "schedule": schedule, "seed": int(seed),
                    "number": t.number, "state": t.state.name, "params": t.params,
                    "val": t.value if t.state.name == "COMPLETE" else None,
                    "test": t.user_attrs.get("test/price_error"), "steps": trial_steps(t),
                    "train_s": trial_train_s(t),
                    "start": t.datetime_start.isoformat(),
                    "end": t.datetime_complete.isoformat(),
                    "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                    "cut": sweep not in ended,
                })
    return {"meta": meta, "trials": trials}


def trial_steps(t: Any) -> int:
    """Training steps the trial really ran: train_steps of a finished run, the pruning step of a pruned one."""
    if t.user_attrs.get("pruned_at_step") is not None:
        return int(t.user_attrs["pruned_at_step"])
    metrics = Path(t.user_attrs.get("output_dir", "/nonexistent")) / "adapter" / "metrics.json"
    if metrics.exists():
        return int(json.loads(metrics.read_text())["train_steps"])
    if t.user_attrs.get("nan_at_step") is not None:
        return int(t.user_attrs["nan_at_step"])
    return max(map(int, t.intermediate_values), default=0)  # a failed run: at least its last score


def trial_train_s(t: Any) -> float | None:
    """The Trainer's own train_runtime of a finished trial (its steps and the validation scores between them):
    the rest of the trial's wall time is start-up, model load, data and the final scoring."""
    metrics = Path(t.user_attrs.get("output_dir", "/nonexistent")) / "adapter" / "metrics.json"
    return json.loads(metrics.read_text()).get("train_runtime_s") if metrics.exists() else None


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Records of several runs (device calls, each some strategies and seeds) as one; same workers per sweep.

    Each trial keeps the machine it ran on (`device`); a strategy and seed found in two runs is an error."""
    if len({p["meta"]["n_jobs"] for p in parts}) > 1:
        raise SystemExit("the runs used different n_jobs: not comparable")
    seen: dict[tuple, int] = {}
    trials = []
    for k, p in enumerate(parts):
        device = p["meta"].get("device", "unknown machine")
        for t in p["trials"]:
            key = (t["strategy"], t["schedule"], t["seed"])
            if seen.setdefault(key, k) != k:
                raise SystemExit(f"{key} is in two of the runs given: pass each once")
            trials.append(dict(t, device=t.get("device", device)))
    metas = [p["meta"].get("parts", [p["meta"]]) for p in parts]
    return {"meta": {"n_jobs": parts[0]["meta"]["n_jobs"], "gpu": parts[0]["meta"]["gpu"],
                     "parts": [m for ms in metas for m in ms]}, "trials": trials}


# ---------------------------------------------------------------- analysis

BUDGETS = {"1/3": 1 / 3, "1x": 1.0}  # shares of the same seed's grid compute at which a user stops and takes the winner
BASELINES = ("random", "grid")  # every strategy is compared, seed by seed, with these
RECOMMENDED = "tpe_median"  # what sweep=tpe does (TPE + median pruning): the goal is checked on it
BOOT = 10_000  # bootstrap resamples of the seeds
# Fewest seeds for calling a difference: below this the percentile bootstrap of a median is about [min, max] of the
# seeds and covers less than it says (3 seeds: [min, max] holds the true median 75 % of the time, not 90 %).
MIN_SEEDS = 8


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def curve(trials: list[dict]) -> list[tuple[int, float, float]]:
    """(cumulative steps, wall s since the sweep's first trial start, best val so far) at each trial's end.

    A trial's steps count when it ends, whatever its state; only finished trials have a val (a pruned
    trial never yields a model to pick)."""
    t0 = min(ts(t["start"]) for t in trials)
    steps, best, points = 0, float("inf"), []
    for t in sorted(trials, key=lambda t: ts(t["end"])):
        steps += t["steps"]
        if t["val"] is not None and t["val"] < best:
            best = t["val"]
        points.append((steps, ts(t["end"]) - t0, best))
    return points


def selected(trials: list[dict], budget_steps: float) -> dict | None:
    """The model a user holds after `budget_steps` training steps: the finished trial of lowest validation
    error among those that ended within the budget (steps counted in the order trials ended); None if none."""
    steps, best = 0, None
    for t in sorted(trials, key=lambda t: ts(t["end"])):
        steps += t["steps"]
        if steps > budget_steps:
            break
        if t["val"] is not None and (best is None or t["val"] < best["val"]):
            best = t
    return best


def sweep_numbers(trials: list[dict], grid_best: float | None, grid_steps: float) -> dict[str, Any]:
    """One sweep against its seed's grid: the selected model's test (and val) error at each budget, and the
    share of the grid's compute spent when its best validation error was first matched (None: never).

    A sweep cut off (trials marked `cut`) counts only where its ended trials settle the answer: a budget its
    steps went past, a grid's best it matched; elsewhere the key `known_...` is False and the value unknown."""
    points = curve(trials)
    cut = any(t.get("cut") for t in trials)
    reached = None if grid_best is None else next((s for s, _, b in points if b <= grid_best), None)
    out: dict[str, Any] = {"frac_to_grid_best": None if reached is None else reached / grid_steps,
                           "known_frac": grid_best is not None and (reached is not None or not cut), "cut": cut,
                           "steps_frac": points[-1][0] / grid_steps, "wall_s": points[-1][1], "trials": len(trials),
                           "pruned": sum(t["state"] == "PRUNED" for t in trials),
                           "failed": sum(t["state"] == "FAIL" for t in trials)}
    for name, share in BUDGETS.items():
        pick = selected(trials, share * grid_steps)
        out[f"known_{name}"] = not cut or points[-1][0] > share * grid_steps
        out[f"test_{name}"] = None if pick is None else pick["test"]
        out[f"val_{name}"] = None if pick is None else pick["val"]
        out[f"params_{name}"] = None if pick is None else pick["params"]
    return out


def idle(trials: list[dict], jobs: int, batched: bool) -> dict[str, float]:
    """Worker idle time from the trials' own start/end: workers x span - time in trials.

    Synchronous batches are the trials numbered k*jobs .. (k+1)*jobs-1 (one invocation each): idle
    inside them is the barrier's cost; the gaps between invocations (a new process starting) are
    reported apart, since a long-lived synchronous sweeper would not pay them. Only whole batches count:
    a run cut off mid-batch leaves a batch whose unfinished trials have no end time."""
    if batched:
        numbers = {t["number"] for t in trials}
        trials = [t for t in trials if all(t["number"] // jobs * jobs + i in numbers for i in range(jobs))]
    busy = sum(ts(t["end"]) - ts(t["start"]) for t in trials)
    span = max(ts(t["end"]) for t in trials) - min(ts(t["start"]) for t in trials)
    out = {"busy": busy, "span": span, "idle": jobs * span - busy, "trials": len(trials)}
    if batched:
        batches: dict[int, list[dict]] = {}
        for t in trials:
            batches.setdefault(t["number"] // jobs, []).append(t)
        spans = [max(ts(t["end"]) for t in b) - min(ts(t["start"]) for t in b) for b in batches.values()]
        out["in_batch_idle"] = jobs * sum(spans) - busy
        out["between_batches"] = span - sum(spans)
    return out


def inf_if_none(v: float | None) -> float:
    return float("inf") if v is None else float(v)


def diff(a: float, b: float) -> float:
    """a - b where inf means "no model / never reached": two infs tie, one inf loses."""
    if a == b:
        return 0.0
    return a - b


def median_interval(values: list[float], seed: int = 0) -> dict[str, float]:
    """Median over seeds and the bootstrap 90 % interval of that median (seeds resampled with replacement,
    percentiles 5 and 95, taken without interpolation so that an inf, "never", stays an inf)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.sort(x[rng.integers(0, len(x), (BOOT, len(x)))], axis=1)
    mid = len(x) // 2
    def med(a: "np.ndarray") -> "np.ndarray":  # the median of sorted rows; an even count takes the upper middle if inf
        if len(x) % 2:
            return a[..., mid]
        lo, hi = a[..., mid - 1], a[..., mid]
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(hi) | np.isinf(lo), np.where(np.isinf(hi), hi, lo), (lo + hi) / 2)
    meds = med(boot)
    return {"median": float(med(np.sort(x))), "lo": float(np.quantile(meds, 0.05, method="inverted_cdf")),
            "hi": float(np.quantile(meds, 0.95, method="inverted_cdf")), "n": len(x)}


def config_noise(trials: list[dict]) -> dict[str, Any]:
    """The noise of one configuration: each grid point's val and test error over the training seeds (the grid
    runs the same 18 points on every seed, so no extra runs): per point the standard deviation and range."""
    by: dict[str, dict[int, dict]] = {}
    for t in trials:
        if t["strategy"] == "grid" and t["schedule"] == "async" and t["val"] is not None:
            by.setdefault(json.dumps(t["params"], sort_keys=True), {})[t["seed"]] = t
    points = []
    for key, runs in by.items():
        if len(runs) < 3:
            continue
        val, test = [r["val"] for r in runs.values()], [r["test"] for r in runs.values()]
        points.append({"params": json.loads(key), "seeds": len(runs), "val_mean": statistics.mean(val),
                       "val_sd": statistics.stdev(val), "val_min": min(val), "val_max": max(val),
                       "test_mean": statistics.mean(test), "test_sd": statistics.stdev(test), "test_min": min(test),
                       "test_max": max(test)})
    points.sort(key=lambda p: p["val_mean"])
    return {"points": points, "median_val_sd": statistics.median(p["val_sd"] for p in points) if points else None,
            "median_test_sd": statistics.median(p["test_sd"] for p in points) if points else None}


def grid_seeds(trials: list[dict]) -> tuple[list[int], float]:
    """Seeds that ran a grid (whole, or cut after some points), and the grid's compute in steps (the same for
    every seed: each point trains to the end): the yardstick of every budget."""
    whole: dict[int, int] = {}
    seeds = set()
    for t in trials:
        if t["strategy"] == "grid" and t["schedule"] == "async":
            seeds.add(t["seed"])
            if not t.get("cut"):
                whole[t["seed"]] = whole.get(t["seed"], 0) + t["steps"]
    return sorted(seeds), statistics.median(whole.values()) if whole else float("nan")


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Per strategy and seed against that seed's grid and random search; medians over seeds with bootstrap
    90 % intervals of the paired differences (each budget over the seeds where both sweeps reached it); the
    noise of one configuration; idle async vs sync."""
    trials, jobs = data["trials"], data["meta"]["n_jobs"]
    seeds, grid_steps = grid_seeds(trials)
    by = {(s, seed, sch): [t for t in trials if (t["strategy"], t["seed"], t["schedule"]) == (s, seed, sch)]
          for s in STRATEGIES for seed in seeds for sch in ("async", "sync")}
    per: dict[str, dict[int, dict]] = {s: {} for s in STRATEGIES}
    for seed in seeds:
        grid = by[("grid", seed, "async")]
        whole = not any(t.get("cut") for t in grid)
        grid_best = min(t["val"] for t in grid if t["val"] is not None) if whole else None
        for s in STRATEGIES:
            if by[(s, seed, "async")]:
                per[s][seed] = {"seed": seed, "grid_best": grid_best, "grid_steps": grid_steps,
                                "device": by[(s, seed, "async")][0].get("device", "unknown"),
                                **sweep_numbers(by[(s, seed, "async")], grid_best, grid_steps)}
    rows = {}
    for s, runs in per.items():
        known = [r for r in runs.values() if r["known_frac"]]
        whole = [r for r in runs.values() if not r["cut"]]
        if not runs or not known:
            continue
        row: dict[str, Any] = {"seeds": sorted(runs), "whole": len(whole), "known": len(known),
                               "reached": sum(r["frac_to_grid_best"] is not None for r in known),
                               "frac_to_grid_best": median_interval([inf_if_none(r["frac_to_grid_best"]) for r in known]),
                               "steps_frac": statistics.median(r["steps_frac"] for r in whole) if whole else float("nan"),
                               "pruned": sum(r["pruned"] for r in whole), "trials": sum(r["trials"] for r in whole),
                               "failed": sum(r["failed"] for r in runs.values()),
                               "gap": median_interval([r["test_1x"] - r["val_1x"] for r in runs.values()
                                                       if r["known_1x"] and r["val_1x"] is not None])}
        for b in BUDGETS:
            mine = {k: r for k, r in runs.items() if r[f"known_{b}"]}
            row[f"test_{b}"] = median_interval([inf_if_none(r[f"test_{b}"]) for r in mine.values()])
            for base in BASELINES:
                paired = [k for k in mine if k in per[base] and per[base][k][f"known_{b}"]]
                if base != s and paired:
                    row[f"vs_{base}_{b}"] = median_interval([diff(inf_if_none(mine[k][f"test_{b}"]),
                                                                  inf_if_none(per[base][k][f"test_{b}"])) for k in paired])
        if s != "random" and per["random"]:
            paired = [k for k, r in runs.items() if r["known_frac"] and k in per["random"] and per["random"][k]["known_frac"]]
            if paired:
                row["frac_vs_random"] = median_interval([diff(inf_if_none(runs[k]["frac_to_grid_best"]),
                                                              inf_if_none(per["random"][k]["frac_to_grid_best"])) for k in paired])
        rows[s] = row
    idles = {}
    old_seeds = sorted({t["seed"] for t in trials if t["strategy"] == SYNC and t["schedule"] == "sync"})
    for sch in ("async", "sync"):
        runs_ = [idle(by[(SYNC, seed, sch)], jobs, sch == "sync") for seed in old_seeds if by.get((SYNC, seed, sch))]
        if runs_:
            idles[sch] = {k: statistics.median(r[k] for r in runs_) for k in runs_[0]} | {"seeds": len(runs_)}
    finished = [t for t in trials if t["val"] is not None and t["test"] is not None and t["seed"] in seeds]
    spread = [t["val"] for t in finished if t["strategy"] == "grid"]
    return {"seeds": seeds, "per_seed": per, "rows": rows, "idle": idles, "noise": config_noise(trials),
            "all_gap": statistics.median(t["test"] - t["val"] for t in finished) if finished else None,
            "grid_val_range": (min(spread), max(spread)) if spread else None, "overhead": overhead(data, seeds)}


def overhead(data: dict[str, Any], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Where a trial's wall time goes, per machine. By length: the median wall time of trials that stopped at
    50, 150 and 300 steps (pruned ones stop early), so the fixed cost per trial (model load, data, final
    scoring) shows as what a line through them leaves at 0 steps; where the records have the Trainer's
    train_runtime, also the split of a 300-step trial inside and outside the Trainer. And a sweep's start-up:
    its command's start to its first trial's start (Python, imports, the workers, CUDA, the study)."""
    out: dict[str, dict[str, Any]] = {}
    starts = {c["sweep"]: c["start"] for p in data["meta"]["parts"] for c in p.get("commands", [])}
    for device in sorted({t.get("device", "unknown") for t in data["trials"]}):
        mine = [t for t in data["trials"] if t.get("device", "unknown") == device and t["schedule"] == "async"
                and t["state"] in ("COMPLETE", "PRUNED")]
        by_steps = {n: [ts(t["end"]) - ts(t["start"]) for t in mine if t["steps"] == n] for n in (50, 150, 300)}
        if not by_steps[300]:
            continue
        first: dict[str, float] = {}
        for t in mine:
            key = f"{t['strategy']}_s{t['seed']}"
            first[key] = min(first.get(key, float("inf")), ts(t["start"]))
        startup = [first[k] - starts[k] for k in first if k in starts]
        row: dict[str, Any] = {"by_steps": {n: (len(v), statistics.median(v)) for n, v in by_steps.items() if v},
                               "sweep_startup_s": statistics.median(startup) if startup else None,
                               "sweeps": len(startup)}
        full = [t for t in mine if t.get("train_s") is not None and t["state"] == "COMPLETE" and t["steps"] == 300]
        if full:
            wall = [ts(t["end"]) - ts(t["start"]) for t in full]
            row |= {"trials": len(full), "wall_s": statistics.median(wall),
                    "train_s": statistics.median(t["train_s"] for t in full),
                    "rest_s": statistics.median(w - t["train_s"] for w, t in zip(wall, full, strict=True))}
        out[device] = row
    return out


# ---------------------------------------------------------------- report

COLORS = {"grid": "black", "random": "tab:gray", "tpe": "tab:blue", "tpe_median": "tab:red", "tpe_hyperband": "tab:orange"}


def plot(result: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    """Left: the selected model's test error against compute (share of the seed's grid), median over seeds
    with the seeds' middle half shaded. Right: each strategy minus random search of the same seed, at 1/3
    and 1x of the grid's compute, median and bootstrap 90 % interval, beside the noise of one configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    trials, seeds = data["trials"], result["seeds"]
    shares = np.linspace(0.1, 1.1, 41)
    for s in result["rows"]:
        curves = []
        for seed in seeds:
            mine = [t for t in trials if t["strategy"] == s and t["seed"] == seed and t["schedule"] == "async"]
            if mine:
                grid_steps = result["per_seed"][s][seed]["grid_steps"]
                picks = [selected(mine, x * grid_steps) for x in shares]
                curves.append([np.nan if p is None else p["test"] for p in picks])
        c = np.array(curves, dtype=float)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mid, q1, q3 = (np.nanpercentile(c, q, axis=0) for q in (50, 25, 75))
        axes[0].plot(shares, mid, color=COLORS[s], lw=1.8, label=f"{LABELS[s]}, {len(curves)} seeds")
        axes[0].fill_between(shares, q1, q3, color=COLORS[s], alpha=0.12)
    for x in BUDGETS.values():
        axes[0].axvline(x, color="black", ls=":", lw=1)
    axes[0].set_xlabel("training steps run / the same seed's grid (1.0 = the grid's compute)")
    axes[0].set_ylabel("test error of the model selected on validation ($)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("median over seeds, middle half of the seeds shaded", fontsize=9)
    names = [s for s in result["rows"] if s != "random"]
    for k, s in enumerate(names):
        for j, b in enumerate(BUDGETS):
            r = result["rows"][s].get(f"vs_random_{b}")
            if r is None:
                continue
            y = k + (0.15 if j == 0 else -0.15)
            axes[1].errorbar(r["median"], y, xerr=[[r["median"] - r["lo"]], [r["hi"] - r["median"]]], fmt="o" if j == 0 else "s",
                             color=COLORS[s], mfc="white" if j == 0 else COLORS[s], capsize=3,
                             label=f"at {b} of the grid's compute" if k == 0 else None)
    points = result["noise"]["points"]
    if points:  # the grid point of lowest mean val: what a good configuration's test error does over seeds
        sd = points[0]["test_sd"]
        axes[1].axvspan(-sd, sd, color="tab:green", alpha=0.12,
                        label=f"±1 SD of the best grid point's test error over seeds (${sd:.1f})")
    axes[1].axvline(0, color="black", lw=1)
    axes[1].set_yticks(range(len(names)), [LABELS[s] for s in names], fontsize=8)
    axes[1].set_xlabel("test error minus random search's, same seed ($; < 0 is better)")
    axes[1].set_title("median paired difference, bootstrap 90 % interval", fontsize=9)
    axes[1].set_ylim(-0.6, len(names) + 0.2)
    axes[1].legend(fontsize=7, loc="upper center", ncol=1, framealpha=0.9)
    fig.suptitle(f"Sweep value on the demo (tiny Llama, sample data), seeds {seeds[0]}-{seeds[-1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v: float | None, spec: str, none: str = "never") -> str:
    return none if v is None or v == float("inf") else format(v, spec)


def money(r: dict[str, float], sign: bool = False) -> str:
    """A median and its interval in dollars: "-1.2 [-3.4, 0.5]"."""
    f = "+.2f" if sign else ".2f"
    return f"{fmt(r['median'], f)} [{fmt(r['lo'], f)}, {fmt(r['hi'], f)}]"


def share(r: dict[str, float], sign: bool = False) -> str:
    f = "+.0%" if sign else ".0%"
    return f"{fmt(r['median'], f)} [{fmt(r['lo'], f)}, {fmt(r['hi'], f)}]"


def shown(r: dict[str, float] | None) -> str:
    """What a paired interval says: lower, higher, or no difference shown; nothing with fewer than MIN_SEEDS."""
    if r is None:
        return "not run"
    if r["n"] < MIN_SEEDS:
        return "too few seeds to tell"
    return "lower" if r["hi"] < 0 else "higher" if r["lo"] > 0 else "no difference shown"


def report(result: dict[str, Any], data: dict[str, Any], png: str) -> str:
    rows, idles, noise = result["rows"], result["idle"], result["noise"]
    jobs = data["meta"]["n_jobs"]
    lo, hi = result["grid_val_range"] or (float("nan"), float("nan"))
    devices = sorted({r["device"] for runs in result["per_seed"].values() for r in runs.values()})
    by_device = {d: sorted({r["seed"] for runs in result["per_seed"].values() for r in runs.values() if r["device"] == d})
                 for d in devices}
    notes = [n for p in data["meta"]["parts"] for n in p.get("notes", [])]
    cut = [c for p in data["meta"]["parts"] for c in p.get("cut", [])]
    lines = [
        "## Sweep value",
        "",
        "Every sweep is `python -m pricer.train experiment=demo sweep=value_NAME seed=S hydra.sweeper.sampler.seed=S` "
        "(sweeps/value_*.yaml) with 4 workers sharing one GPU: the tiny random-init Llama, 4-bit, on the sample data, "
        "300 steps at batch 8 a trial, validation error scored every 50 steps on 200 items held out of the train split "
        "(what the sweep selects on), test error on 250 test items (only reported). "
        f"Seeds {', '.join(f'{_ranges(v)} on {d}' for d, v in by_device.items())}. "
        "The analysis: `python bench/sweep_value.py analyse bench/results/sweep_value*.json --markdown BENCHMARKS.md` "
        "(the per-trial records, no GPU).",
        f"The grid's runs span val ${lo:.2f} to ${hi:.2f}: the hyperparameters matter here.",
        "",
        *[f"- Seeds {_ranges(p['seeds'])}: `{' '.join(p['argv'])}`" for p in data["meta"]["parts"] if p.get("argv")],
        *[f"- {note}" for note in notes],
        *([f"- Cut off by a device call's limit and left out: {', '.join(cut)}."] if cut else []),
        *([""] if notes or cut or any(p.get("argv") for p in data["meta"]["parts"]) else []),
        "What a user gets: the test error of the model the sweep selects on validation when it has spent 1/3 and "
        "all (1x) of the same seed's grid compute (training steps run; a pruned trial counts its steps). Each "
        "strategy is paired seed by seed with random search and the grid of the same training seed; the table gives "
        "the median over seeds and, in brackets, the bootstrap 90 % interval of that median (10,000 resamples of "
        f"the seeds). A difference is called only where its interval excludes zero and at least {MIN_SEEDS} seeds "
        "are paired (with fewer, the bootstrap interval of a median is about the seeds' min to max and covers less "
        "than 90 %).",
        "",
        "| strategy | seeds | test at 1/3 | minus random | minus grid | test at 1x | minus random | minus grid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        n = [r[f"test_{b}"]["n"] for b in BUDGETS]
        cells = [LABELS[s], str(n[0]) if len(set(n)) == 1 else " / ".join(f"{k}" for k in n)]
        for b in BUDGETS:
            cells += [f"${money(r[f'test_{b}'])}"] + [money(r[f"vs_{base}_{b}"], True) if f"vs_{base}_{b}" in r else "-"
                                                      for base in BASELINES]
        lines.append("| " + " | ".join(cells) + " |")
    best = noise["points"][0] if noise["points"] else None
    diffs = [r[k]["median"] for r in rows.values() for k in r if k.startswith("vs_")]
    smaller = sum(abs(d) < best["test_sd"] for d in diffs) if best else 0
    lines += [
        "",
        f"![selected model's test error vs compute; paired differences with intervals]({png})",
        "",
        "Secondary: compute to first match the same seed's grid's best validation error (\"never\": not within "
        "the sweep), and how optimistic the winner's validation error is (test minus val of the model selected "
        f"at 1x; over all finished trials the median gap is ${fmt(result['all_gap'], '.2f')}).",
        "",
        "| strategy | reached the grid's best | compute to reach it | minus random's | winner's test - val | compute run "
        "| pruned trials | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        lines.append(f"| {LABELS[s]} | {r['reached']} of {r['known']} | {share(r['frac_to_grid_best'])} | "
                     f"{share(r['frac_vs_random'], True) if 'frac_vs_random' in r else '-'} | ${money(r['gap'], True)} | "
                     f"{r['steps_frac']:.0%} | {r['pruned']} of {r['trials']} | {r['failed']} |")
    if best:
        lines += [
            "",
            f"Noise of one configuration, from the grid (its 18 points run on every seed, {best['seeds']} seeds): "
            f"the median point's standard deviation over training seeds is ${noise['median_val_sd']:.2f} in val and "
            f"${noise['median_test_sd']:.2f} in test. The point of lowest mean val, {_params(best['params'])}: "
            f"val ${best['val_mean']:.2f} ± {best['val_sd']:.2f} (${best['val_min']:.2f}-{best['val_max']:.2f}), "
            f"test ${best['test_mean']:.2f} ± {best['test_sd']:.2f} (${best['test_min']:.2f}-{best['test_max']:.2f}). "
            f"{smaller} of the {len(diffs)} median paired differences above are smaller than that point's test-error "
            "standard deviation: the training seed alone moves one configuration's result as much as most choices "
            "of strategy do.",
        ]
    lines += ["", *verdict(result), ""]
    lines += overhead_lines(result["overhead"], data)
    if "sync" in idles and "async" in idles:
        a, s = idles["async"], idles["sync"]
        lines += [
            f"Idle workers, {LABELS[SYNC]}, {jobs} workers, medians over {s['seeds']} seeds (one H200, seeds 0-2); both "
            f"schedules run (synchronous: the command again with n_trials = {jobs}, {2 * jobs}, ..., each waiting for its "
            "slowest trial). Idle = workers x span - time in trials, from the trials' datetime_start/complete:",
            "",
            "| schedule | trials | span (first start to last end) | span per trial | time in trials | worker idle "
            "| idle share |",
            "|---|---|---|---|---|---|---|",
            f"| asynchronous (one command) | {a['trials']:.0f} | {a['span']:.0f} s | {a['span'] / a['trials']:.1f} s | "
            f"{a['busy']:.0f} s | {a['idle']:.0f} s | {a['idle'] / (jobs * a['span']):.0%} |",
            f"| synchronous batches of {jobs}, inside the batches | {s['trials']:.0f} | "
            f"{s['span'] - s['between_batches']:.0f} s | {(s['span'] - s['between_batches']) / s['trials']:.1f} s | "
            f"{s['busy']:.0f} s | {s['in_batch_idle']:.0f} s | "
            f"{s['in_batch_idle'] / (jobs * (s['span'] - s['between_batches'])):.0%} |",
            f"| synchronous, also the restarts between batches | {s['trials']:.0f} | {s['span']:.0f} s | "
            f"{s['span'] / s['trials']:.1f} s | {s['busy']:.0f} s | {s['idle']:.0f} s | {s['idle'] / (jobs * s['span']):.0%} |",
            "",
        ]
    return "\n".join(lines + ["Per seed: test error of the selected model at 1/3 and 1x of the grid's compute, and "
                              "the share of the grid's compute at which the grid's best val was matched.", "",
                              per_seed_table(result), ""])


def _ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, run_ = [], [seeds[0]]
    for s in seeds[1:]:
        if s == run_[-1] + 1:
            run_.append(s)
        else:
            out.append(run_)
            run_ = [s]
    out.append(run_)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in out)


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in p.items())


def overhead_lines(over: dict[str, dict[str, Any]], data: dict[str, Any]) -> list[str]:
    """Where a trial's time goes, per machine, and the machine's load while the sweeps ran."""
    lines = []
    for device, o in over.items():
        lengths = ", ".join(f"{n} steps {w:.1f} s ({k} trials)" for n, (k, w) in o["by_steps"].items())
        line = (f"Per trial on {device}, all sweeps' workers sharing the machine (median wall time by the steps a "
                f"trial ran): {lengths}.")
        if 50 in o["by_steps"]:
            (_, w50), (_, w300) = o["by_steps"][50], o["by_steps"][300]
            per_step = (w300 - w50) / 250
            line += (f" A line through the 50- and 300-step medians: {per_step * 1000:.0f} ms a step (training and its "
                     f"validation scores) and {w50 - 50 * per_step:.1f} s a trial besides (model load, data, final "
                     "val and test scoring).")
        if "train_s" in o:
            line += (f" Of a finished 300-step trial ({o['trials']} trials), {o['train_s']:.1f} s in the Trainer (steps "
                     f"and validation scores) and {o['rest_s']:.1f} s outside it.")
        if o["sweep_startup_s"] is not None:
            line += (f" A sweep's start-up, its command to its first trial's start (Python, imports, 4 worker "
                     f"processes, CUDA, the study): {o['sweep_startup_s']:.1f} s (median of {o['sweeps']} sweeps).")
        lines.append(line)
    for p in data["meta"]["parts"]:
        load = p.get("load") or []
        if load:
            cpu = statistics.median(x[1] for x in load)
            gpu = statistics.median(x[2] for x in load)
            mem = max(x[3] for x in load)
            lines.append(f"Load on {p['device']} with {p['parallel']} sweeps of {p['n_jobs']} workers side by side "
                         f"(OMP_NUM_THREADS={p['omp_threads']}): CPU busy {cpu:.0%} and GPU utilisation {gpu:.0f} % "
                         f"(medians of {len(load)} samples), GPU memory at most {mem / 1024:.1f} GiB.")
    return lines + ([""] if lines else [])


def verdict(result: dict[str, Any]) -> list[str]:
    """The goal, checked on intervals: the recommended sweep's selected model has lower test error than random
    search's at 1/3 of the grid's compute (interval excluding zero), and it matches the grid's best validation
    error within half the grid's compute (median, interval under 50 %). Every other strategy is described the same way."""
    rows, lines = result["rows"], []
    for s, r in rows.items():
        if s == "random":
            continue
        parts = [f"at {b} {shown(r.get(f'vs_random_{b}'))}" + (f" ({r[f'vs_random_{b}']['n']} seeds)" if f"vs_random_{b}" in r else "")
                 for b in BUDGETS]
        lines.append(f"- {LABELS[s]} against random search, test error: {'; '.join(parts)}.")
    r = rows.get(RECOMMENDED)
    if r and "vs_random_1/3" in r:
        better = shown(r["vs_random_1/3"]) == "lower"
        fast = r["frac_to_grid_best"]["hi"] <= 0.5 and r["frac_to_grid_best"]["n"] >= MIN_SEEDS
        n = min(r["vs_random_1/3"]["n"], r["frac_to_grid_best"]["n"])
        verdict_ = "Goal met" if better and fast else "Goal not met" if n >= MIN_SEEDS else "Goal not shown (too few seeds)"
        lines.append(f"\n{verdict_} by {LABELS[RECOMMENDED]} ({r['vs_random_1/3']['n']} seeds): test error minus random "
                     f"search's at 1/3 of the grid's compute ${money(r['vs_random_1/3'], True)} (goal: interval below 0); "
                     f"the grid's best val matched at {share(r['frac_to_grid_best'])} of its compute (goal: at most 50 %)."
                     + (f" {n} seeds: fewer than the {MIN_SEEDS} needed to call anything." if n < MIN_SEEDS else ""))
    return lines


def per_seed_table(result: dict[str, Any]) -> str:
    names = list(result["rows"])
    lines = ["| seed | grid's best val | " + " | ".join(LABELS[s] for s in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for seed in result["seeds"]:
        grid_best = result["per_seed"]["grid"][seed]["grid_best"]
        cells = [str(seed), "cut" if grid_best is None else f"${grid_best:.2f}"]
        for s in names:
            r = result["per_seed"][s].get(seed)
            if r is None:
                cells.append("-")
                continue
            tests = [f"${fmt(r[f'test_{b}'], '.2f', 'none')}" if r[f"known_{b}"] else "cut" for b in BUDGETS]
            cells.append(" · ".join([*tests, fmt(r["frac_to_grid_best"], ".0%") if r["known_frac"] else "cut"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run the sweeps into OUT, then analyse")
    r.add_argument("out", type=Path)
    r.add_argument("--gpu", action="store_true", help="workers share GPU 0 (else CPU workers)")
    r.add_argument("--dry", action="store_true", help="tiny sizes, one seed: the pipeline on a CPU in ~2 min")
    r.add_argument("--seeds", type=int, nargs="+", default=None)
    r.add_argument("--jobs", type=int, default=None, help="workers per sweep (default 4; --dry 2)")
    r.add_argument("--blocks", nargs="+", default=[*STRATEGIES, "sync"],
                   help="strategies run one block after another; a+b runs a and b side by side")
    r.add_argument("--sync-seeds", type=int, nargs="*", default=None, help="seeds of the synchronous run (default: all)")
    r.add_argument("--sync-batches", type=int, default=None, help="batches of n_jobs in it (default: the whole study)")
    r.add_argument("--parallel", type=int, default=None,
                   help="no blocks: all strategies x seeds in one queue, this many sweeps at a time (seed by seed)")
    r.add_argument("--end-s", type=float, default=1e9, help="--parallel: start no sweep that would end after this many s")
    r.add_argument("--guess-s", type=float, default=240.0, help="--parallel: a sweep's length before one has ended")
    r.add_argument("--fit", type=float, default=1.0,
                   help="--parallel: the share of a sweep that must fit before --end-s for it to start (1: whole sweeps)")
    a = sub.add_parser("analyse", help="table and PNG from OUT (or a saved records JSON)")
    a.add_argument("source", type=Path, nargs="+", help="run dirs or records JSONs (merged: runs of several calls)")
    for p in (r, a):
        p.add_argument("--markdown", type=Path, default=None, help="write the section into this BENCHMARKS.md")
        p.add_argument("--png", type=Path, default=REPO / "bench" / "sweep_value.png")
        p.add_argument("--records", type=Path, default=None, help="save the per-trial records JSON here")
    args = parser.parse_args()
    if args.verb == "run":
        seeds = args.seeds or ([0] if args.dry else [0, 1, 2])
        jobs = args.jobs or (2 if args.dry else 4)
        blocks = [b.split("+") for b in args.blocks]
        if any(s not in STRATEGIES and s != "sync" for b in blocks for s in b):
            parser.error(f"--blocks: strategies are {', '.join(STRATEGIES)}, and sync ({SYNC} in synchronous batches)")
        sync_seeds = seeds if args.sync_seeds is None else args.sync_seeds
        run(args.out, seeds, jobs, args.gpu, args.dry, blocks, sync_seeds, args.sync_batches, args.parallel, args.end_s,
            args.guess_s, args.fit)
        sources = [args.out]
    else:
        sources = args.source
    data = merge([json.loads(s.read_text()) if s.suffix == ".json" else collect(s) for s in sources])
    if args.records:
        args.records.parent.mkdir(parents=True, exist_ok=True)
        args.records.write_text(json.dumps(data, indent=None, separators=(",", ":")))
    result = analyse(data)
    if not result["seeds"]:
        raise SystemExit("no seed has a finished grid: nothing to compare (see the sweeps' logs)")
    plot(result, data, args.png)
    png = os.path.relpath(args.png, (args.markdown or REPO / "BENCHMARKS.md").parent)
    text = report(result, data, png)
    print(text)
    if args.markdown:
        write_section(args.markdown, "## Sweep value", text)


if __name__ == "__main__":
    main()
