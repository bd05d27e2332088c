"""Sweep value: what each search strategy buys on real training, at the grid's compute.

    python bench/sweep_value.py run OUT --gpu            # the benchmark (one H200: BENCHMARKS.md, "Sweep value")
    python bench/sweep_value.py run OUT --dry            # the same pipeline, tiny sizes, ~2 min on 2 CPU cores
    python bench/sweep_value.py analyse OUT              # table + PNG from what the sweeps wrote
    python bench/sweep_value.py analyse bench/results/sweep_value.json   # the same from the saved records

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


def run(out: Path, seeds: list[int], jobs: int, gpu: bool, dry: bool, blocks: list[list[str]],
        sync_seeds: list[int], sync_batches: int | None) -> None:
    """Each block's strategies x seeds side by side, blocks one after another; records to OUT.

    The block "sync" is the synchronous schedule of SYNC, for sync_seeds, sync_batches batches of
    n_jobs (default: the whole study): a block of its own, so with 3 seeds it meets the same load
    on the machine (3 sweeps of n_jobs workers) as SYNC's asynchronous block."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("PRICER_CACHE", str(out / "cache"))
    machine = ["hardware=a100_notebook", "hardware.dataloader_num_workers=0",
               f"hydra.sweeper.devices=[{','.join('0' * jobs)}]"] if gpu else []
    if not gpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    # build the tiny model once, before workers race to build it
    subprocess.run([sys.executable, "-c", "import sys; from pricer.modeling import ensure_tiny_model; "
                    "ensure_tiny_model(sys.argv[1])", f"{env['PRICER_CACHE']}/tiny-llama"], cwd=REPO, env=env, check=True)
    log: list[dict] = []

    def save_log() -> None:  # before and after every block: a run cut off mid-block still analyses
        meta = {"seeds": seeds, "n_jobs": jobs, "gpu": gpu, "dry": dry, "commands": log, "host": os.uname().nodename}
        (out / "run_log.json").write_text(json.dumps(meta, indent=1))

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
    """Per-trial records from each sweep's optuna.db and its trials' adapter/metrics.json."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = json.loads((out / "run_log.json").read_text())
    trials: list[dict] = []
    for db in sorted(out.glob("*_s*/sweeps/*/optuna.db")):
        sweep = db.parents[2].name  # e.g. tpe_median_sync_s1
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
                    "start": t.datetime_start.isoformat(),
                    "end": t.datetime_complete.isoformat(),
                    "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
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


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Records of several runs (e.g. two device calls, each some strategies) as one; same workers per sweep."""
    if len({p["meta"]["n_jobs"] for p in parts}) > 1:
        raise SystemExit("the runs used different n_jobs: not comparable")
    meta = dict(parts[0]["meta"], commands=[c for p in parts for c in p["meta"]["commands"]],
                hosts=[p["meta"]["host"] for p in parts])
    return {"meta": meta, "trials": [t for p in parts for t in p["trials"]]}


# ---------------------------------------------------------------- analysis

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


def sweep_numbers(trials: list[dict], grid_best: float, grid_steps: int) -> dict[str, Any]:
    """One sweep against its seed's grid: compute and wall time to reach the grid's best, best within
    the grid's compute, and that winner's test error."""
    points = curve(trials)
    reached = next(((s, w) for s, w, b in points if b <= grid_best), (None, None))
    within = [t for t, (s, _, _) in zip(sorted(trials, key=lambda t: ts(t["end"])), points, strict=True)
              if s <= grid_steps and t["val"] is not None]
    winner = min(within, key=lambda t: t["val"]) if within else None
    return {"steps_to_grid_best": reached[0], "wall_to_grid_best": reached[1],
            "best_at_budget": winner["val"] if winner else None, "winner_test": winner["test"] if winner else None,
            "winner_params": winner["params"] if winner else None, "steps": points[-1][0], "wall_s": points[-1][1],
            "trials": len(trials), "pruned": sum(t["state"] == "PRUNED" for t in trials),
            "failed": sum(t["state"] == "FAIL" for t in trials)}


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


def med(values: list[float | None]) -> float | None:
    """Median over seeds; a seed that never reached counts as infinitely late (None if most did not)."""
    if not values:
        return None
    m = statistics.median([float("inf") if v is None else v for v in values])
    return None if m == float("inf") else m


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Per strategy and seed against that seed's grid; medians over seeds; idle async vs sync."""
    trials, jobs = data["trials"], data["meta"]["n_jobs"]
    seeds = sorted({t["seed"] for t in trials})
    by = {(s, seed, sch): [t for t in trials if (t["strategy"], t["seed"], t["schedule"]) == (s, seed, sch)]
          for s in STRATEGIES for seed in seeds for sch in ("async", "sync")}
    per: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    for seed in seeds:
        grid = by[("grid", seed, "async")]
        grid_best, grid_steps = min(t["val"] for t in grid if t["val"] is not None), sum(t["steps"] for t in grid)
        for s in STRATEGIES:
            if by[(s, seed, "async")]:
                per[s].append({"seed": seed, "grid_best": grid_best, "grid_steps": grid_steps,
                               **sweep_numbers(by[(s, seed, "async")], grid_best, grid_steps)})
    rows = {}
    for s, runs in per.items():
        if not runs:
            continue
        frac = [None if r["steps_to_grid_best"] is None else r["steps_to_grid_best"] / r["grid_steps"] for r in runs]
        rows[s] = {"seeds": len(runs), "reached": sum(f is not None for f in frac), "frac_to_grid_best": med(frac),
                   "wall_to_grid_best": med([r["wall_to_grid_best"] for r in runs]),
                   "best_at_budget": med([r["best_at_budget"] for r in runs]),
                   "winner_test": med([r["winner_test"] for r in runs]),
                   "steps_frac": med([r["steps"] / r["grid_steps"] for r in runs]),
                   "wall_s": med([r["wall_s"] for r in runs]), "pruned": sum(r["pruned"] for r in runs),
                   "trials": sum(r["trials"] for r in runs), "failed": sum(r["failed"] for r in runs)}
    idles = {}
    for sch in ("async", "sync"):
        runs = [idle(by[(SYNC, seed, sch)], jobs, sch == "sync") for seed in seeds if by[(SYNC, seed, sch)]]
        if runs:
            idles[sch] = {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"seeds": len(runs)}
    spread = [t["val"] for t in trials if t["strategy"] == "grid" and t["val"] is not None]
    return {"per_seed": per, "rows": rows, "idle": idles, "grid_val_range": (min(spread), max(spread)) if spread else None}


# ---------------------------------------------------------------- report

def plot(data: dict[str, Any], path: Path) -> None:
    """Best validation error so far vs compute (share of the seed's grid) and vs wall time; one thin
    line per seed, the grid's best of each seed dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = dict(zip(STRATEGIES, ["black", "tab:gray", "tab:blue", "tab:red", "tab:orange"], strict=True))
    trials = data["trials"]
    seeds = sorted({t["seed"] for t in trials})
    for seed in seeds:
        grid = [t for t in trials if t["strategy"] == "grid" and t["seed"] == seed and t["schedule"] == "async"]
        grid_steps = sum(t["steps"] for t in grid)
        for s in STRATEGIES:
            mine = [t for t in trials if t["strategy"] == s and t["seed"] == seed and t["schedule"] == "async"]
            if not mine:
                continue
            pts = [p for p in curve(mine) if p[2] < float("inf")]
            label = LABELS[s] if seed == seeds[0] else None
            axes[0].step([p[0] / grid_steps for p in pts], [p[2] for p in pts], where="post", color=colors[s],
                         alpha=0.8, lw=1.2, label=label)
            axes[1].step([p[1] for p in pts], [p[2] for p in pts], where="post", color=colors[s], alpha=0.8, lw=1.2)
    axes[0].axvline(0.5, color="tab:red", ls=":", lw=1)
    axes[0].axvline(1.0, color="black", ls=":", lw=1)
    axes[0].set_xlabel("training steps run / the same seed's grid (1.0 = the grid's compute)")
    axes[1].set_xlabel("wall time since the sweep's first trial (s)")
    axes[0].set_ylabel("best validation error so far ($)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Sweep value on the demo (tiny Llama, sample data), {len(seeds)} seeds: one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v: float | None, spec: str, none: str = "not reached") -> str:
    return none if v is None else format(v, spec)


def report(result: dict[str, Any], data: dict[str, Any], png: str) -> str:
    meta, rows, idles = data["meta"], result["rows"], result["idle"]
    jobs = meta["n_jobs"]
    lo, hi = result["grid_val_range"] or (float("nan"), float("nan"))
    lines = [
        "## Sweep value",
        "",
        f"`python bench/sweep_value.py run OUT {'--gpu' if meta['gpu'] else ''}` then "
        "`python bench/sweep_value.py analyse OUT` (or `analyse bench/results/sweep_value.json`, the per-trial records).",
        f"Machine: {'one NVIDIA H200, 16 CPU cores' if meta['gpu'] else 'CPU'}; {jobs} workers per sweep"
        f"{' sharing the one GPU (hydra.sweeper.devices=[0,...])' if meta['gpu'] else ''}, the {len(meta['seeds'])} "
        "seeds of a strategy side by side, strategies one after another. Every sweep is "
        "`python -m pricer.train experiment=demo sweep=value_NAME seed=S hydra.sweeper.sampler.seed=S` "
        "(sweeps/value_*.yaml): the tiny random-init Llama, 4-bit, on the sample data, 300 steps at batch 8 a trial, "
        "validation error scored every 50 steps on 200 items held out of the train split, the test error "
        "(250 test items) only reported.",
        f"The grid's 18 runs span val ${lo:.2f} to ${hi:.2f}: the hyperparameters matter here.",
        "",
        *[f"- {note}" for note in meta.get("notes", [])],
        *([""] if meta.get("notes") else []),
        "Medians over seeds; each seed compared with the grid of the same seed (same training seed). Compute = "
        "training steps run (a pruned trial counts its steps), as a share of that grid's.",
        "",
        "| strategy | reached the grid's best (seeds) | compute to reach it | wall time to reach it "
        "| best val within the grid's compute | its test error | compute run | wall time | pruned trials |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        lines.append(f"| {LABELS[s]} | {r['reached']} of {r['seeds']} | {fmt(r['frac_to_grid_best'], '.0%')} | "
                     f"{fmt(r['wall_to_grid_best'], '.0f')}{'' if r['wall_to_grid_best'] is None else ' s'} | "
                     f"${r['best_at_budget']:.2f} | ${r['winner_test']:.2f} | {r['steps_frac']:.0%} | "
                     f"{r['wall_s']:.0f} s | {r['pruned']} of {r['trials']} |")
    lines += ["", f"![best validation error vs compute and wall time]({png})", ""]
    if "sync" in idles and "async" in idles:
        a, s = idles["async"], idles["sync"]
        lines += [
            f"Idle workers, {LABELS[SYNC]}, {jobs} workers, medians over {s['seeds']} seeds; both schedules run "
            f"(synchronous: the command again with n_trials = {jobs}, {2 * jobs}, ..., each waiting for its slowest "
            "trial). Idle = workers x span - time in trials, from the trials' datetime_start/complete:",
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
    return "\n".join(lines + verdict(result) + ["Per seed:", "", per_seed_table(result), ""])


def verdict(result: dict[str, Any]) -> list[str]:
    """The issue's goal, checked: TPE with pruning reaches the grid's best validation error in at most
    half the grid's compute (median over seeds), with a winner's test error no worse than the grid's."""
    rows, lines = result["rows"], []
    grid = rows.get("grid")
    for s in ("tpe_median", "tpe_hyperband"):
        r = rows.get(s)
        if r is None or grid is None:
            continue
        frac, test_ok = r["frac_to_grid_best"], r["winner_test"] <= grid["winner_test"]
        if frac is not None and frac <= 0.5 and test_ok:
            lines.append(f"Goal met by {LABELS[s]}: the grid's best in {frac:.0%} of its compute (median), "
                         f"winner's test ${r['winner_test']:.2f} against the grid's ${grid['winner_test']:.2f}.")
        else:
            reach = "never reached it in the median seed" if frac is None else f"needed {frac:.0%} of its compute"
            lines.append(f"Goal not met by {LABELS[s]}: {reach} (goal: 50 %, reached in {r['reached']} of "
                         f"{r['seeds']} seeds); best val within the grid's compute ${r['best_at_budget']:.2f} against "
                         f"the grid's ${grid['best_at_budget']:.2f}, winner's test ${r['winner_test']:.2f} against "
                         f"${grid['winner_test']:.2f}.")
    return lines + ([""] if lines else [])


def per_seed_table(result: dict[str, Any]) -> str:
    lines = ["| strategy | seed | grid's best val | steps to reach it | best val within budget | test | trials (pruned) |",
             "|---|---|---|---|---|---|---|"]
    for s, runs in result["per_seed"].items():
        for r in runs:
            lines.append(f"| {s} | {r['seed']} | ${r['grid_best']:.2f} | "
                         f"{fmt(r['steps_to_grid_best'], 'd')} of {r['grid_steps']} | ${r['best_at_budget']:.2f} | "
                         f"${r['winner_test']:.2f} | {r['trials']} ({r['pruned']}) |")
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
        run(args.out, seeds, jobs, args.gpu, args.dry, blocks, sync_seeds, args.sync_batches)
        sources = [args.out]
    else:
        sources = args.source
    data = merge([json.loads(s.read_text()) if s.suffix == ".json" else collect(s) for s in sources])
    if args.records:
        args.records.parent.mkdir(parents=True, exist_ok=True)
        args.records.write_text(json.dumps(data, indent=None, separators=(",", ":")))
    result = analyse(data)
    plot(data, args.png)
    png = os.path.relpath(args.png, (args.markdown or REPO / "BENCHMARKS.md").parent)
    text = report(result, data, png)
    print(text)
    if args.markdown:
        write_section(args.markdown, "## Sweep value", text)


if __name__ == "__main__":
    main()
