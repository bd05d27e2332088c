"""Sweep efficiency: worker idle time (asynchronous vs synchronous batches) and compute saved by pruning.

    python bench/sweep_efficiency.py            # ~2 min on 2 CPU cores; no GPU needed

Both parts run the real pricer_optuna sweeper on a toy Hydra app whose "training" sleeps,
so the numbers measure the sweeper, not a model:

1. Idle time. 8 trials of unequal length (1.5 to 6 s) on 2 workers. The asynchronous
   sweeper is measured; synchronous batches of 2 (hydra-optuna-sweeper's way: launch 2,
   wait for both) are the same measured trials replayed pairwise, each batch lasting as
   long as its slower trial. Idle = workers x wall time - time spent in trials.
2. Pruning. 12 TPE trials over a learning rate, each reporting a learning curve for 20
   steps of 0.1 s, with the median pruner and without; same seed. Compute = steps run.

It prints the numbers and writes the "## Sweep efficiency" section of BENCHMARKS.md.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from bench_report import write_section  # bench/bench_report.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DURATIONS = [6.0, 1.5, 4.5, 1.5, 1.5, 6.0, 3.0, 4.5]  # s per trial, by trial number: unequal on purpose

TOY_APP = '''
import json, math, os, time
import hydra
from pricer import trial as job


@hydra.main(version_base="1.3", config_path=".", config_name="toy")
def main(cfg) -> float:
    number = job.current_trial_info()["number"]
    lr, steps, value = cfg.lr, 0, float("nan")
    final = 0.5 + 0.3 * (math.log10(lr) - math.log10(3e-4)) ** 2  # best near the notebook's lr
    per_step = cfg.durations[number % len(cfg.durations)] / cfg.steps if cfg.durations else cfg.step_s
    for step in range(cfg.steps):
        time.sleep(per_step)
        value = final + 2.0 * math.exp(-step / 5)  # a loss curve falling towards `final`
        steps = step + 1
        if job.report(value, step):
            break
    with open("runs.jsonl", "a") as f:
        f.write(json.dumps({"number": number, "steps": steps, "final": final}) + "\\n")
    job.raise_if_pruned()
    return value


if __name__ == "__main__":
    main()
'''

TOY_CONFIG = """
defaults:
  - override hydra/sweeper: pricer_optuna
  - _self_
lr: 1e-4
steps: 20
step_s: 0.1
durations: []  # s per trial, by trial number; empty: steps of step_s
hydra:
  mode: MULTIRUN
  sweep:
    dir: sweep
  sweeper:
    study_name: bench
    heartbeat_interval: 1
    sampler:
      seed: 0
    params:
      lr: tag(log, interval(1e-5, 1e-2))
"""


def run_sweep(folder: Path, *overrides: str) -> tuple[optuna.Study, list[dict], float]:
    """Run the toy sweep in a fresh folder; (study, what the jobs ran, wall seconds)."""
    folder.mkdir(parents=True)
    (folder / "toy.py").write_text(TOY_APP)
    (folder / "toy.yaml").write_text(TOY_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICER_OPTUNA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    subprocess.run([sys.executable, "toy.py", *overrides], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{folder / 'sweep' / 'optuna.db'}")
    runs = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    return study, runs, wall


def idle_time(work: Path) -> dict[str, float]:
    """Measured asynchronous schedule vs the same trials in synchronous batches of 2."""
    study, _, _ = run_sweep(work / "async", f"durations=[{','.join(map(str, DURATIONS))}]",
                            f"hydra.sweeper.n_trials={len(DURATIONS)}",
                            "hydra.sweeper.n_jobs=2")
    trials = sorted(study.trials, key=lambda t: t.number)
    busy = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    first = min(t.datetime_start for t in trials)
    async_wall = (max(t.datetime_complete for t in trials) - first).total_seconds()
    sync_wall = sum(max(busy[i:i + 2]) for i in range(0, len(busy), 2))  # each batch waits for its slower trial
    return {"trials": len(busy), "busy": sum(busy), "async_wall": async_wall, "sync_wall": sync_wall,
            "async_idle": 2 * async_wall - sum(busy), "sync_idle": 2 * sync_wall - sum(busy)}


def pruning(work: Path, n_trials: int = 12) -> dict[str, dict[str, float]]:
    out = {}
    for name, pruner in [("no pruning", "none"), ("median pruner", "median")]:
        extra = ["hydra.sweeper.pruner.n_startup_trials=3", "hydra.sweeper.pruner.n_warmup_steps=5"]
        study, runs, wall = run_sweep(work / name.replace(" ", "_"), f"hydra.sweeper.n_trials={n_trials}",
                                      f"hydra/sweeper/pruner={pruner}", *(extra if pruner == "median" else []))
        states = [t.state for t in study.trials]
        out[name] = {"steps": sum(r["steps"] for r in runs), "max_steps": 20 * n_trials, "wall": wall,
                     "pruned": states.count(optuna.trial.TrialState.PRUNED), "best": study.best_value}
    return out


def report(idle: dict[str, float], prune: dict[str, dict[str, float]]) -> str:
    a_pct = 100 * idle["async_idle"] / (2 * idle["async_wall"])
    s_pct = 100 * idle["sync_idle"] / (2 * idle["sync_wall"])
    full, pruned = prune["no pruning"], prune["median pruner"]
    saved = 100 * (1 - pruned["steps"] / full["steps"])
    lines = [
        "## Sweep efficiency",
        "",
        "`python bench/sweep_efficiency.py` (toy trials that sleep, 2 CPU cores; the real pricer_optuna sweeper).",
        "",
        f"Idle time, 2 workers, {idle['trials']} trials of unequal length (1.5 to 6 s, {idle['busy']:.1f} s of "
        "trials in all, Hydra's per-job overhead included):",
        "",
        "| schedule | wall time | worker idle | idle share |",
        "|---|---|---|---|",
        f"| asynchronous (pricer_optuna, measured) | {idle['async_wall']:.1f} s | {idle['async_idle']:.1f} s | "
        f"{a_pct:.0f} % |",
        f"| synchronous batches of 2 (same trials replayed) | {idle['sync_wall']:.1f} s | {idle['sync_idle']:.1f} s "
        f"| {s_pct:.0f} % |",
        "",
        f"Pruning, {full['max_steps'] // 20} TPE trials x 20 reported steps of 0.1 s, same seed:",
        "",
        "| sweep | steps trained | pruned trials | wall time | best objective |",
        "|---|---|---|---|---|",
    ]
    for name, r in prune.items():
        lines.append(f"| {name} | {r['steps']} of {r['max_steps']} | {r['pruned']} | {r['wall']:.1f} s | "
                     f"{r['best']:.4f} |")
    lines += ["", f"The median pruner trained {saved:.0f} % fewer steps. Asynchronous workers start their next "
              "trial when their last ends; a synchronous batch keeps the faster GPU idle until the slower trial "
              "ends.", ""]
    return "\n".join(lines)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        idle = idle_time(Path(tmp))
        prune = pruning(Path(tmp))
    text = report(idle, prune)
    print(text)
    write_section(REPO / "BENCHMARKS.md", "## Sweep efficiency", text)


if __name__ == "__main__":
    main()
