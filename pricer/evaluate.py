"""Score a model on the course's test: after training, during training, and from the shell.

    python -m pricer.evaluate outputs/runs/2024-09-13_13.04.39                   # a run's adapter
    python -m pricer.evaluate me/pricer-2024-09-13_13.04.39 --revision 0a1b2c3   # a Hub repo at a commit
    python -m pricer.evaluate outputs/runs/2024-09-13_13.04.39 --adapter none    # its base model alone
    python -m pricer.evaluate --adapter none model=tiny data=sample hardware=cpu quant=none

A run dir or Hub repo brings its own config (`.hydra/config.yaml` or `config.yaml`),
so the base model, quantization and data are the ones the adapter was trained
with; `key=value` arguments change it (dotted keys). Without a source, the config
is composed from conf/train.yaml with the arguments as Hydra overrides.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from pricer import PACKAGE_DIR
from pricer.metrics import baseline_metrics, price_metrics, save_chart, summary_line

# pricer.predict (torch) is imported where a model is scored: bad input to `python -m pricer.evaluate`
# is refused before any heavy import, in well under a second.

METRICS_FILE = "metrics.json"
CHART_FILE = "price_chart.png"
CONFIG_FILES = (".hydra/config.yaml", "config.yaml")  # Hydra's copy in a run dir; the Hub repo's copy
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter_config.json")  # a run dir's final adapter; a checkpoint's
LOGGED_DURING_TRAINING = ("price_error", "rmsle", "hit_rate", "median_error")


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{key}": value for key, value in metrics.items()}


def _unprefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(prefix + "/")}


def evaluate_model(
    model,
    tokenizer,
    prompts: list[str],
    prices: list[float],
    out_dir: str | Path,
    train_prices: list[float] | None,
    top_k: int,
    batch_tokens: int,
    title: str = "pricer",
    max_length: int | None = None,
) -> dict[str, Any]:
    """Predict, score, write metrics.json and price_chart.png in `out_dir`; return the metrics.

    Keys are `test/...` for the model and `baseline/...` for always guessing the
    mean of `train_prices`, side by side so a reader sees whether the model beats it.
    """
    from pricer.predict import predict_prices

    guesses = predict_prices(model, tokenizer, prompts, top_k, batch_tokens, max_length=max_length)
    test = price_metrics(guesses, prices)
    metrics = _prefixed("test", test)
    if train_prices:
        metrics.update(_prefixed("baseline", baseline_metrics(train_prices, prices)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    save_chart(guesses, prices, out / CHART_FILE, f"{title}: {summary_line(test)}")
    return metrics


def score_validation(model, tokenizer, prompts: list[str], prices: list[float], top_k: int, batch_tokens: int,
                     max_length: int | None = None) -> dict[str, Any]:
    """`val/...` metrics of the held-out slice: what a sweep selects on, so the test set stays a report."""
    from pricer.predict import predict_prices

    guesses = predict_prices(model, tokenizer, prompts, top_k, batch_tokens, max_length=max_length)
    return _prefixed("val", price_metrics(guesses, prices))


def price_eval_callback(
    trainer,
    prompts: list[str],
    prices: list[float],
    every_steps: int,
    top_k: int,
    batch_tokens: int,
    max_length: int | None = None,
):
    """A TrainerCallback scoring `prompts` every `every_steps` optimizer steps.

    It logs through `trainer.log`, so the values reach log_history, W&B and any
    callback's `on_log` (a sweeper's pruner) as `eval_price_error`, `eval_rmsle`,
    `eval_hit_rate`, `eval_median_error`; W&B files `eval_*` under `eval/`. It needs
    no eval_dataset and no eval_strategy: one batched forward pass per step logged.
    """
    from transformers import TrainerCallback

    from pricer.distributed import on_main
    from pricer.predict import number_token_values, predict_prices

    tokenizer = trainer.processing_class
    values = number_token_values(tokenizer)  # inspect the tokenizer once, not at every step

    class PriceEval(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every_steps == 0:  # several ranks: rank 0 scores once, every rank logs its numbers
                metrics = on_main(lambda: price_metrics(
                    predict_prices(model, tokenizer, prompts, top_k, batch_tokens, values, max_length), prices))
                trainer.log({f"eval_{key}": metrics[key] for key in LOGGED_DURING_TRAINING})

    return PriceEval()


def score_slices(model, tokenizer, slices, out_dir: Path, top_k: int, batch_tokens: int, max_length: int | None,
                 title: str) -> dict[str, Any]:
    """A run's scores: the course's test report (and baseline) written to `out_dir`, plus `val/...` when
    the run held out a validation slice (what a sweep selects on)."""
    scores = evaluate_model(model, tokenizer, slices.test.prompts, slices.test.prices, out_dir, slices.train_prices,
                            top_k, batch_tokens, title=title, max_length=max_length)
    if slices.val is not None:
        scores |= score_validation(model, tokenizer, slices.val.prompts, slices.val.prices, top_k, batch_tokens,
                                   max_length)
    return scores


def _saved_config(source: str, revision: str | None):
    """The config saved with a run dir or a Hub repo, or None if it has none."""
    from omegaconf import OmegaConf

    if Path(source).is_dir():
        found = [Path(source) / name for name in CONFIG_FILES if (Path(source) / name).exists()]
        return OmegaConf.load(found[0]) if found else None
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RevisionNotFoundError

    for name in CONFIG_FILES:
        try:
            return OmegaConf.load(hf_hub_download(source, name, revision=revision))
        except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not in the cache: before EntryNotFoundError,
            # its base class, which would compose conf/train.yaml and fail later in a dataset download
            why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
            _refuse(f"{source}: {why} and its {name} is not in the local cache: "
                    f"{'unset HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else 'check the network'}, or pass a local run dir")
        except RevisionNotFoundError:
            _refuse(f"{source} has no revision {revision}: pass a commit, branch or tag of that repo")
        except EntryNotFoundError:
            continue
        except HfHubHTTPError as err:  # 401/404: no such repo, or no access to it
            status = getattr(err.response, "status_code", None)
            _refuse(f"{source}: the Hub answered {status or type(err).__name__}: check the repo id, or set HF_TOKEN "
                    "to a token that can read it")
    return None


def run_config(source: str | None, revision: str | None, overrides: list[str]) -> dict[str, Any]:
    """The model, quant, hardware and data groups, resolved to plain values."""
    from omegaconf import OmegaConf

    cfg = _saved_config(source, revision) if source else None
    if cfg is None:
        from hydra import compose, initialize_config_dir

        if source:
            print(f"{source} holds no {' or '.join(CONFIG_FILES)}: composing conf/train.yaml with {overrides}")
        with initialize_config_dir(str(PACKAGE_DIR.parent / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    else:
        groups = [o for o in overrides if "." not in o.split("=", 1)[0]]
        if groups:
            raise SystemExit(f"{groups}: a saved run config takes dotted keys, e.g. hardware.accelerator=cpu")
        # a run saved before a key of `evaluation` existed scores with conf/train.yaml's value of it
        defaults = OmegaConf.load(PACKAGE_DIR.parent / "conf" / "train.yaml").evaluation
        cfg = OmegaConf.merge({"evaluation": defaults}, cfg, OmegaConf.from_dotlist(overrides))
    groups = ("model", "quant", "hardware", "data", "evaluation", "training")
    return {group: OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True) for group in groups if group in cfg}


def load_for_eval(config: dict[str, Any], adapter: str | None, revision: str | None):
    """Tokenizer and model as the run trained them, with the adapter on top if given."""
    import torch

    from pricer.config import as_group
    from pricer.config_errors import ConfigError
    from pricer.modeling import load_for_run
    from pricer.schema import Model

    hardware = config["hardware"]
    try:
        model_group = as_group(Model, config["model"], "model")
    except ConfigError as err:
        _refuse(str(err))
    if hardware["accelerator"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this run used a GPU and this machine has none: add hardware.accelerator=cpu "
                         "hardware.compute_dtype=float32 (and quant.bnb_4bit_compute_dtype=float32 with nf4)")
    # liger as in training: 12-17 % more items/s on an H200 (BENCHMARKS.md)
    tokenizer, model = load_for_run(model_group, config["quant"] or {}, hardware["compute_dtype"],
                                    hardware["accelerator"], bool(hardware.get("liger")), adapter, revision)
    return model, tokenizer


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pricer.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("args", nargs="*", metavar="SOURCE | key=value",
                        help="a run dir or Hub repo id (at most one), then config overrides")
    parser.add_argument("--revision", default=None, help="Hub commit, branch or tag of SOURCE")
    parser.add_argument("--adapter", choices=["source", "none"], default="source",
                        help="none: the base model alone (the baseline row)")
    # Unset: the run config's `evaluation` group decides, so a run is scored again as it was scored.
    parser.add_argument("-n", "--items", type=int, default=None, help="first N test items")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--out", default=None, help="default: outputs/eval/{source}[-base][@revision]")
    parser.add_argument("--tracking", choices=["wandb", "none"], default=None,
                        help="log the scores as a W&B run of job_type evaluate; default: as the run was tracked")
    args = parser.parse_args(argv)
    sources = [a for a in args.args if "=" not in a]
    if len(sources) > 1:
        parser.error(f"one SOURCE at most, got {sources}")
    args.source, args.overrides = (sources or [None])[0], [a for a in args.args if "=" in a]
    if args.source is None and args.adapter != "none":
        parser.error("no SOURCE: name a run dir or Hub repo, or pass --adapter none for the base model")
    for flag, value in (("--items", args.items), ("--top-k", args.top_k), ("--batch-tokens", args.batch_tokens)):
        if value is not None and value <= 0:
            _refuse(f"{flag} {value} must be a positive integer: leave it out to score as the run was scored")
    _check_evaluation_keys(args.overrides)
    if args.source is not None:
        _check_source(args.source, args.adapter)
        if args.revision is not None and Path(args.source).is_dir():  # it would label the output and change nothing
            _refuse(f"--revision {args.revision} names a Hub commit, and {args.source} is a local run dir: drop --revision, "
                    "or pass the run's Hub repo id")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        _refuse(f"--out {args.out} is a file: name a folder for metrics.json and the chart (it is made if missing)")
    return args


def _refuse(message: str) -> NoReturn:
    """Bad input: one line on stderr and exit code 2, as pricer.train does, before any load."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _check_evaluation_keys(overrides: list[str]) -> None:
    """`evaluation.KEY=...` must name a key of the group: a saved run config would take a typo silently."""
    from dataclasses import fields

    from pricer.config_errors import ConfigError, check_known
    from pricer.schema import Evaluation

    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    given = {key.split(".", 1)[1]: None for key in keys if key.startswith("evaluation.")}
    try:
        check_known("evaluation", given, {f.name for f in fields(Evaluation)})
    except ConfigError as err:
        _refuse(str(err))


def _check_evaluation_values(evaluation: dict[str, Any]) -> None:
    """The evaluation group's values against the schema (a saved run config takes `top_k=abc` as text,
    which would fail after the model load)."""
    from pricer.config import as_group
    from pricer.config_errors import ConfigError
    from pricer.schema import Evaluation

    try:
        as_group(Evaluation, evaluation, "evaluation")
    except ConfigError as err:
        _refuse(str(err))


def _looks_local(source: str) -> bool:
    """A path rather than a Hub repo id, which is `name` or `namespace/name` and never starts with a dot."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def _check_source(source: str, adapter: str) -> None:
    """A missing local path would be looked up on the Hub; a dir without an adapter fails after the model load."""
    path = Path(source)
    if not path.exists():
        if _looks_local(source):
            _refuse(f"{source}: no such run dir: check the path (a Hub repo id is namespace/name)")
        return  # a Hub repo id
    if not path.is_dir():
        _refuse(f"{source} is a file: pass a run dir (outputs/runs/...) or a Hub repo id")
    if adapter == "source" and not any((path / name).is_file() for name in ADAPTER_FILES):
        _refuse(f"{source} holds no adapter (no {' or '.join(ADAPTER_FILES)}): pass a finished run's dir, "
                "or add --adapter none to score its base model")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pricer.logs import install_log_filters

    install_log_filters()
    args = _parse_args(argv)
    from pricer.config_errors import ConfigError, library_errors_in_one_line

    try:
        with library_errors_in_one_line():
            config = run_config(args.source, args.revision, args.overrides)
    except ConfigError as err:  # an override conf/train.yaml cannot take, e.g. model=nope or top_k=abc
        _refuse(str(err))
    saved = config["evaluation"]
    _check_evaluation_values(saved)
    items = args.items or saved["test_items"]
    top_k = args.top_k or saved["top_k"]
    batch_tokens = args.batch_tokens or saved["batch_tokens"]
    name = Path(args.source or config["model"]["pretrained_model_name_or_path"]).name
    name += ("-base" if args.adapter == "none" else "") + (f"@{args.revision}" if args.revision else "")
    out = Path(args.out or Path("outputs") / "eval" / name)

    from pricer.data import DataError, load_slices

    data = config["data"]  # before the model: a data problem shows in seconds, not after an 8B load
    try:
        slices = load_slices(data["path"], data["data_files"], data["revision"], data["max_train_samples"], items, None)
    except DataError as err:  # e.g. the run's data file moved since it trained
        _refuse(f"{err} (data.data_files.SPLIT=PATH or data.path=... on this command line points it elsewhere)")
    prompts, prices, train_prices = slices.test.prompts, slices.test.prices, slices.train_prices
    backend = (config.get("tracking") or {}).get("backend", "none")
    if args.tracking is not None:
        backend = args.tracking
    from pricer.tracking import preflight

    problem = preflight(backend)  # before the model: W&B's own failure would come after the load
    if problem:
        _refuse(problem.replace("pass tracking=none", "pass --tracking none"))
    adapter = None if args.adapter == "none" else args.source
    if adapter and (Path(adapter) / "adapter" / "adapter_config.json").exists():
        adapter = str(Path(adapter) / "adapter")  # a run dir keeps its final adapter in adapter/
    model, tokenizer = load_for_eval(config, adapter, args.revision)
    max_length = config.get("training", {}).get("max_length")  # as the run cut its training prompts
    metrics = evaluate_model(model, tokenizer, prompts, prices, out, train_prices, top_k, batch_tokens, name, max_length)
    print(f"{name}: {summary_line(_unprefixed('test', metrics))}")
    print(f"constant mean ${metrics['baseline/guess']:,.2f}: {summary_line(_unprefixed('baseline', metrics))}")
    print(f"wrote {out / METRICS_FILE} and {out / CHART_FILE}")
    track(backend, config, args, name, out, metrics)
    return metrics


def track(backend: str, config: dict[str, Any], args: argparse.Namespace, name: str, out: Path,
          metrics: dict[str, Any]) -> None:
    """The scores as a W&B run of job_type `evaluate`, in the project the run tracked to, grouped with
    the run it re-scores (a run dir: its W&B run's name), so the runs table tells it from training."""
    if backend == "none":
        return
    from pricer import tracking
    from pricer.resume import RUN_FILE
    from pricer.run_names import tracker_run_id

    run_file = Path(args.source or "") / RUN_FILE
    scored = json.loads(run_file.read_text()).get("project_run_name") if args.source and run_file.is_file() else None
    settings = config.get("tracking") or {}
    tracking.start(backend, settings.get("project") or config.get("project", "pricer"), f"{name}-eval",
                   scored or args.source, {"source": args.source, "revision": args.revision, "adapter": args.adapter,
                                           "items": metrics["test/items"], "out": str(out)},
                   str(out), tracker_run_id(), settings.get("entity"), settings.get("tags"), job_type="evaluate")
    tracking.log_summary(backend, metrics, images=[out / CHART_FILE])
    tracking.finish(backend, "finished")


if __name__ == "__main__":
    main()
