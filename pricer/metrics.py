"""The course's tester: error, RMSLE, hit colours, the one-line summary and the chart.

Colours follow the course: green (a hit) when the error is under $40 or under 20 %
of the truth, orange under $80 or 40 %, red otherwise. Relative errors are taken
as error / truth, as the course did, so a boundary such as $60 on $300 (exactly
20 %) lands where the arithmetic says, not a rounding error away.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np

GREEN, ORANGE, RED = "green", "orange", "red"
HIT_DOLLARS, HIT_SHARE = 40.0, 0.2  # green
NEAR_DOLLARS, NEAR_SHARE = 80.0, 0.4  # orange


def colours(guesses: np.ndarray, truths: np.ndarray) -> list[str]:
    """Each prediction's colour; a truth of 0 has no relative error (dollars only)."""
    errors = np.abs(guesses - truths)
    share = np.divide(errors, truths, out=np.full_like(errors, np.inf), where=truths > 0)
    green = (errors < HIT_DOLLARS) | (share < HIT_SHARE)
    orange = (errors < NEAR_DOLLARS) | (share < NEAR_SHARE)
    return [GREEN if g else ORANGE if o else RED for g, o in zip(green, orange, strict=True)]


def price_metrics(guesses: list[float], truths: list[float]) -> dict[str, float | int]:
    """Mean and median absolute error, RMSLE, hit rate (a fraction) and colour counts.

    RMSLE compares log(1 + price); a negative guess is read as 0 so the log exists.
    """
    if len(guesses) != len(truths) or not truths:
        raise ValueError(f"need as many guesses as truths, at least one: got {len(guesses)} and {len(truths)}")
    guess = np.asarray(guesses, dtype=np.float64)
    truth = np.asarray(truths, dtype=np.float64)
    errors = np.abs(guess - truth)
    log_errors = np.log1p(np.maximum(guess, 0.0)) - np.log1p(truth)
    colour = colours(guess, truth)
    return {
        "price_error": float(errors.mean()),
        "rmsle": float(math.sqrt(np.mean(log_errors**2))),
        "hit_rate": colour.count(GREEN) / len(colour),
        "median_error": float(np.median(errors)),
        "green": colour.count(GREEN),
        "orange": colour.count(ORANGE),
        "red": colour.count(RED),
        "items": len(colour),
    }


def baseline_metrics(train_prices: list[float], truths: list[float]) -> dict[str, float | int]:
    """Always guessing the training mean: the bar a model must clear (course: $145.51)."""
    mean = float(np.mean(train_prices))
    return {**price_metrics([mean] * len(truths), truths), "guess": mean}


def summary_line(metrics: dict[str, float]) -> str:
    """The course's one line: `Error=$47.12 RMSLE=0.45 Hits=61.2%`."""
    return (
        f"Error=${metrics['price_error']:,.2f} RMSLE={metrics['rmsle']:,.2f} "
        f"Hits={100 * metrics['hit_rate']:.1f}%"
    )


def run_report(metrics: dict[str, Any], model: str, data: str, train_items: int, run_dir: Path,
               next_command: str) -> list[str]:
    """The end of a run in words a newcomer reads: each slice's scores, what was trained, how well
    against the constant baseline, where it is, what next."""
    scored = {prefix: {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(prefix + "/")}
              for prefix in ("val", "test", "baseline")}
    lines = [f"{prefix:<8} {summary_line(values)}" for prefix, values in scored.items() if values]
    test, baseline = scored["test"], scored["baseline"]
    ratio = test["price_error"] / baseline["price_error"] if baseline["price_error"] else float("nan")
    verdict = "better than" if ratio < 1 else "no better than"
    return [
        *lines,
        f"trained a LoRA adapter on {model} with {train_items:,} items of {data}: "
        f"{metrics['train_steps']:,} steps in {metrics['train_runtime_s']:,.0f} s",
        f"on {test['items']} test items its guesses are off by ${test['price_error']:,.2f} on average and "
        f"{100 * test['hit_rate']:.1f}% are hits (within $40 or 20%)",
        f"always guessing the mean training price (${baseline['guess']:,.2f}) is off by "
        f"${baseline['price_error']:,.2f} with {100 * baseline['hit_rate']:.1f}% hits: the model's error is "
        f"{ratio:.2f}x that, {verdict} the baseline",
        f"chart: {run_dir / 'adapter' / 'price_chart.png'}",
        f"adapter: {run_dir / 'adapter'}   log: {run_dir / 'train.log'}",
        f"next: {next_command}",
    ]


def save_chart(guesses: list[float], truths: list[float], path: str | Path, title: str) -> Path:
    """Truth against guess, coloured like the metrics, with the y = x line.

    matplotlib's Figure is used without pyplot: no global backend or figure state,
    so it runs headless and inside a training process.
    """
    from matplotlib.figure import Figure

    guess = np.asarray(guesses, dtype=np.float64)
    truth = np.asarray(truths, dtype=np.float64)
    top = max(float(truth.max()), float(guess.max()), 1.0)
    figure = Figure(figsize=(12, 8))
    axes = figure.subplots()
    axes.plot([0, top], [0, top], color="deepskyblue", lw=2, alpha=0.6)
    axes.scatter(truth, guess, s=3, c=colours(guess, truth))
    axes.set_xlabel("Ground truth ($)")
    axes.set_ylabel("Model estimate ($)")
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
